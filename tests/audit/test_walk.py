"""The pure parts: which ranges a prune may cut, and how verify walks links across gaps."""

from __future__ import annotations

from opsconductor.safety.audit_chain import GENESIS, Gap, Row, row_hash, walk
from opsconductor.safety.retention import _ranges


def test_ranges_split_at_kept_rows_and_earlier_gaps() -> None:
    assert _ranges([]) == []
    assert _ranges([(1, True), (2, True), (3, False), (4, True), (6, True), (7, True)]) == [
        (1, 2), (4, 4), (6, 7)]
    assert _ranges([(1, False), (2, False)]) == []


def chain(n: int) -> list[Row]:
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        h = row_hash(prev, f"row {seq}")
        rows.append(Row(table="t", id=seq, seq=seq, prev_hash=prev, row_hash=h, recomputed=h))
        prev = h
    return rows


def test_walk_bridges_recorded_gaps_and_names_unrecorded_ones() -> None:
    rows = chain(6)
    assert walk("t", "audit", rows, [], 6) == []
    gap = Gap(id=1, from_seq=2, to_seq=3, prev_hash=rows[0].row_hash or "",
              last_hash=rows[2].row_hash or "", reason="pruned", ref="")
    kept = [rows[0], *rows[3:]]
    assert walk("t", "audit", kept, [gap], 6) == []
    [problem] = walk("t", "audit", kept, [], 6)
    assert (problem.kind, problem.seq) == ("deleted", 2)
    assert "seq 2..3" in problem.message
    # a gap whose hashes do not fit the chain bridges nothing
    forged = gap.model_copy(update={"prev_hash": "f" * 64})
    assert [p.kind for p in walk("t", "audit", kept, [forged], 6)] == ["deleted"]
    # the head beyond the last row: truncated
    assert [p.kind for p in walk("t", "audit", rows[:4], [], 6)] == ["truncated"]
