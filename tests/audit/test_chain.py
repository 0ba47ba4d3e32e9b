"""The hash chain against the session's PostgreSQL: links written by the triggers on the
product's own write paths, concurrent writers that cannot fork a chain, and every tampering
(edit, delete, reorder, truncated tail, rewritten chain, forged checkpoint) named by verify."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path

import asyncpg
import pytest

from opsconductor.safety.audit_chain import (
    GENESIS,
    AllowedSigner,
    checkpoint_all,
    row_hash,
    trusted_audit_keys,
    verify,
)
from tests.audit.helpers import (
    add_approval,
    add_audit,
    add_events,
    chain_rows,
    dump,
    execution,
    make_key,
    tenant,
)
from tests.integration.helpers import Cli, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def audit_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("audit-key"), "audit")


@pytest.fixture(scope="module")
async def trusted(audit_key: Path) -> list[AllowedSigner]:
    return await trusted_audit_keys(audit_key, None)


async def populated(pool: asyncpg.Pool) -> tuple[str, str]:
    """A tenant with 6 events, 4 RBAC rows and an approval decided once (superseded)."""
    t = tenant()
    eid = await execution(pool, t)
    await add_audit(pool, t, 2, eid)
    await add_approval(pool, eid, [])
    await add_events(pool, eid, 6)
    await add_approval(pool, eid, [{"approver": "bob", "accepted": True}], state="approved")
    await add_audit(pool, t, 2, eid)
    return t, eid


async def test_rows_link_into_one_chain_per_tenant_and_stream(
        db_pool: asyncpg.Pool, audit_key: Path, trusted: list[AllowedSigner]) -> None:
    t, eid = await populated(db_pool)
    await add_events(db_pool, eid, 6)  # the same keys again: ON CONFLICT DO NOTHING, no gap
    events = await chain_rows(db_pool, t, "events")
    assert [r["seq"] for r in events] == [1, 2, 3, 4, 5, 6]
    assert events[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["row_hash"] for a, b in itertools.pairwise(events))
    assert all(r["recomputed"] == r["row_hash"] for r in events)
    audit = await chain_rows(db_pool, t, "audit")
    # rbac 1, 2; approval v1 at 3 (superseded, a gap); approval v2 at 4; rbac 5, 6
    assert [(r["tbl"], r["seq"]) for r in audit] == [
        ("rbac_audit", 1), ("rbac_audit", 2), ("approvals", 4), ("rbac_audit", 5),
        ("rbac_audit", 6)]
    # an exported row's hash is recomputable without our code
    content = await db_pool.fetchval(
        "SELECT execution.audit_content(v) FROM execution.event_log v WHERE id = $1",
        events[0]["id"])
    assert row_hash(GENESIS, content) == events[0]["row_hash"]
    [cp_audit, cp_events] = sorted(await checkpoint_all(db_pool, audit_key, tenant=t),
                                   key=lambda c: c.stream)
    assert (cp_audit.stream, cp_audit.seq, cp_events.seq) == ("audit", 6, 6)
    report = await verify(db_pool, tenant=t, trusted=trusted)
    assert report.ok, dump(report)
    assert [(c.stream, c.rows, c.gaps, c.checkpoints) for c in report.chains] == [
        ("audit", 5, 1, 1), ("events", 6, 0, 1)]


async def test_concurrent_writers_of_one_tenant_never_fork_its_chain(
        db_pool: asyncpg.Pool) -> None:
    t = tenant()
    eids = [await execution(db_pool, t) for _ in range(8)]

    async def writer(eid: str) -> None:
        for batch in range(5):
            await add_events(db_pool, eid, 4, prefix=f"b{batch}")
            await add_audit(db_pool, t, 1, eid)

    async def duplicate() -> None:  # a retried batch racing its first attempt
        await add_events(db_pool, eids[0], 4, prefix="dup")

    await asyncio.gather(*(writer(e) for e in eids), *(duplicate() for _ in range(4)))
    events = await chain_rows(db_pool, t, "events")
    audit = await chain_rows(db_pool, t, "audit")
    print(f"concurrent: 8 writers + 4 racing duplicates, {len(events)} events, "
          f"{len(audit)} audit rows, one unforked chain each")
    assert [r["seq"] for r in events] == list(range(1, 8 * 5 * 4 + 4 + 1))
    assert [r["seq"] for r in audit] == list(range(1, 8 * 5 + 1))
    assert (await verify(db_pool, tenant=t)).ok


async def test_verify_names_each_tampering(db_pool: asyncpg.Pool, audit_key: Path,
                                           trusted: list[AllowedSigner],
                                           tmp_path: Path) -> None:
    found: dict[str, str] = {}

    async def first_problem(t: str) -> object:
        report = await verify(db_pool, tenant=t, trusted=trusted)
        assert not report.ok
        found[t] = report.problems[0].message
        return report.problems[0]

    # edited: an event's message rewritten in place
    t, _ = await populated(db_pool)
    victim = (await chain_rows(db_pool, t, "events"))[2]
    await db_pool.execute("UPDATE execution.event_log SET message = 'nothing happened'"
                          " WHERE id = $1", victim["id"])
    p = await first_problem(t)
    assert (p.kind, p.table, p.row_id, p.seq) == ("edited", "execution_events", victim["id"], 3)
    edited = p.message

    # deleted: an RBAC audit row from the middle
    t, _ = await populated(db_pool)
    audit = await chain_rows(db_pool, t, "audit")
    await db_pool.execute("DELETE FROM execution.rbac_audit WHERE id = $1", audit[1]["id"])
    p = await first_problem(t)
    assert (p.kind, p.seq, p.row_id) == ("deleted", 2, audit[2]["id"]), p
    deleted = p.message

    # reordered: two events swap places (their seqs)
    t, _ = await populated(db_pool)
    ev = await chain_rows(db_pool, t, "events")
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE execution.event_log SET seq = 4 WHERE id = $1",
                           ev[4]["id"])
        await conn.execute("UPDATE execution.event_log SET seq = 5 WHERE id = $1",
                           ev[3]["id"])
    p = await first_problem(t)
    assert (p.kind, p.row_id, p.seq) == ("reordered", ev[4]["id"], 4), p
    reordered = p.message

    # truncated: the last two events gone and the head wound back to match, after a
    # checkpoint: only the signed checkpoint still knows
    t, _ = await populated(db_pool)
    await checkpoint_all(db_pool, audit_key, tenant=t)
    ev = await chain_rows(db_pool, t, "events")
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM execution.event_log WHERE id = ANY($1)",
                           [ev[4]["id"], ev[5]["id"]])
        await conn.execute("UPDATE execution.audit_chain_heads SET seq = 4, hash = $2"
                           " WHERE tenant = $1 AND stream = 'events'", t, ev[3]["row_hash"])
    p = await first_problem(t)
    assert (p.kind, p.seq) == ("truncated", 5), p
    truncated = p.message
    # ... and the same without winding the head back: the head says so already
    t, _ = await populated(db_pool)
    ev = await chain_rows(db_pool, t, "events")
    await db_pool.execute("DELETE FROM execution.event_log WHERE id = $1", ev[5]["id"])
    p = await first_problem(t)
    assert (p.kind, p.seq) == ("truncated", 6), p
    head_truncated = p.message

    # rewritten: an edit with every later hash recomputed (and the head): the links hold,
    # the checkpoint signed earlier does not
    t, _ = await populated(db_pool)
    await checkpoint_all(db_pool, audit_key, tenant=t)
    ev = await chain_rows(db_pool, t, "events")
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE execution.event_log SET message = 'benign'"
                           " WHERE id = $1", ev[1]["id"])
        prev = ev[1]["prev_hash"]
        for r in ev[1:]:
            new = await conn.fetchval(
                "UPDATE execution.event_log v SET prev_hash = $2,"
                " row_hash = execution.audit_hash($2, execution.audit_content(v))"
                " WHERE id = $1 RETURNING row_hash", r["id"], prev)
            prev = new
        await conn.execute("UPDATE execution.audit_chain_heads SET hash = $2"
                           " WHERE tenant = $1 AND stream = 'events'", t, prev)
    p = await first_problem(t)
    assert (p.kind, p.seq) == ("edited", 6) and "rewritten" in p.message, p
    rewritten = p.message

    # forged checkpoint: signed with another key
    t, _ = await populated(db_pool)
    other = make_key(tmp_path, "mallory")
    await checkpoint_all(db_pool, other, tenant=t)
    p = await first_problem(t)
    assert p.kind == "checkpoint" and "signature is not valid" in p.message, p
    forged = p.message

    for name, message in [("edited", edited), ("deleted", deleted), ("reordered", reordered),
                          ("truncated (head wound back)", truncated),
                          ("truncated (head intact)", head_truncated),
                          ("rewritten", rewritten), ("forged checkpoint", forged)]:
        print(f"{name}: {message}")


async def test_cli_verify_and_export(db_pool: asyncpg.Pool, migrated_pg: str,
                                     audit_key: Path, tmp_path: Path) -> None:
    t, _ = await populated(db_pool)
    env = {**os.environ, "OPSC_DATABASE_URL": migrated_pg, "OPSC_AUDIT_SIGNING_KEY": str(audit_key),
           "OPSC_HOME": str(tmp_path / "home")}

    async def run(*args: str, env: dict[str, str] = env) -> Cli:
        return await run_cli(env, *args)

    assert (await run("audit", "checkpoint", "--tenant", t)).code == 0
    ok = await run("audit", "verify", "--tenant", t, "--json")
    assert ok.code == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    out = tmp_path / "audit.jsonl"
    exp = await run("audit", "export", "--tenant", t, "--output", str(out))
    assert exp.code == 0, exp.stderr
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert {r["tenant"] for r in rows} == {t} and len(rows) == 11
    assert all(row_hash(r["prev_hash"], r["content"]) == r["row_hash"] for r in rows)
    until = await run("audit", "export", "--tenant", t, "--until", "2000-01-01T00:00:00Z")
    assert until.code == 0 and until.stdout == ""
    victim = next(r for r in rows if r["table"] == "rbac_audit")
    await db_pool.execute("UPDATE execution.rbac_audit SET decision = 'deny' WHERE id = $1",
                          victim["id"])
    bad = await run("audit", "verify", "--tenant", t)
    assert bad.code == 1
    assert f"EDITED: audit:{t}: rbac_audit id {victim['id']} (seq 1) was edited" in bad.stdout
    nokey = await run("audit", "verify", "--tenant", t,
                      env={k: v for k, v in env.items() if k != "OPSC_AUDIT_SIGNING_KEY"})
    assert nokey.code == 2 and "OPSC_AUDIT_TRUSTED_KEYS" in nokey.stderr
