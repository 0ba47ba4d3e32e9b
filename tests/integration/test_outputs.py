"""Outputs by reference and bytes that never break a run, against the real stack.

Big outputs go to `execution.step_outputs` in full; history and the workflow result carry a
bounded, escaped summary. NUL bytes and invalid UTF-8 in output are stored and shown escaped.
Malformed requests are refused with exit 2 before anything is written. `opsconductor logs`
prints a step's full output, live with `--follow`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from opsconductor.schema.limits import MAX_DEPTH, MAX_METADATA_CHARS, MAX_STRING_CHARS
from tests.helpers import request, shell, wait_for
from tests.integration.helpers import OPSCONDUCTOR, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")
LINE = "journal: web-01 nginx[4242]: GET /healthz 200 0.003s upstream=10.0.0.7:8080\n"


def lines_command(count: int, label: str = "") -> str:
    """A shell command printing `count` numbered journal lines (deterministic bytes)."""
    return f"seq 1 {count} | sed 's|$| {label}{LINE.strip()}|'"


def lines_bytes(count: int, label: str = "") -> bytes:
    return "".join(f"{i} {label}{LINE.strip()}\n" for i in range(1, count + 1)).encode()


async def history_bytes(engine: Any, workflow_id: str) -> int:
    history = await engine.temporal.get_workflow_handle(workflow_id).fetch_history()
    return len(history.to_json())


async def test_forty_steps_of_200kb_complete_with_bounded_history_and_result(
        engine: Any) -> None:
    """The issue's first hang: 40 x 200 KB once put 2.6 MB into the result (TMPRL1103)."""
    count = 200 * 1024 // len(LINE) + 1
    steps = [shell(f"dump{i:02d}", lines_command(count, f"s{i} ")) for i in range(40)]
    resp = await engine.execute(request(steps), wait=True)
    result = resp.result
    assert result.status.value == "completed", result.error
    payload = len(result.model_dump_json())
    hist = await history_bytes(engine, resp.workflow_id)
    print(f"\n40 x {len(lines_bytes(count, 's0 ')):,} B of output: result {payload:,} B, "
          f"history {hist:,} B ({hist // 40:,} B per step)")
    assert payload < 600_000 and hist < 1_500_000
    assert result.steps_total == 40 and result.steps_omitted == 0
    rows = await engine.pool.fetch(
        "SELECT step_id, size, sha256, encoding, length(data) AS stored FROM "
        "execution.step_outputs WHERE execution_id = $1 AND stream = 'stdout'",
        uuid.UUID(resp.execution_id))
    assert len(rows) == 40
    for row in rows:
        want = lines_bytes(count, f"s{int(row['step_id'][4:])} ")
        assert row["size"] == len(want) and row["sha256"] == hashlib.sha256(want).hexdigest()
        assert row["encoding"] == "zlib" and row["stored"] < row["size"] // 4
    first = next(s for s in result.steps if s.step_id == "dump00")
    ref = first.outputs["stdout"]
    assert ref.size == len(lines_bytes(count, "s0 ")) and not ref.complete
    assert first.stdout.startswith("1 s0 journal") and "characters omitted" in first.stdout
    assert first.stdout.rstrip().endswith(f"{count} s0 {LINE.strip()}")


async def test_nul_and_invalid_utf8_in_output_are_stored_and_shown_escaped(
        engine: Any, env: dict[str, str]) -> None:
    steps = [shell("binary", r"printf 'head\000mid\377tail\n'; printf 'e\000rr' >&2"),
             shell("fails", r"printf 'bad\000news' >&2; exit 3", deps=["binary"],
                   failure_handling="continue")]
    resp = await engine.execute(request(steps), wait=True)
    by_id = {s.step_id: s for s in resp.result.steps}
    binary, fails = by_id["binary"], by_id["fails"]
    assert binary.status.value == "completed"
    assert binary.stdout == "head\\x00mid\ufffdtail\n" and binary.stderr == "e\\x00rr"
    # The command's own failure, not a database one; the run ends instead of hanging.
    assert fails.status.value == "failed" and fails.exit_code == 3
    assert "bad\\x00news" in (fails.error or "")
    eid = uuid.UUID(resp.execution_id)
    row = await engine.pool.fetchrow(
        "SELECT error, output FROM execution.step_runs WHERE execution_id = $1 AND "
        "step_id = 'fails'", eid)
    assert "bad\\x00news" in row["error"]
    stored = await engine.pool.fetchval(
        "SELECT data FROM execution.step_outputs WHERE execution_id = $1 AND step_id = "
        "'binary' AND stream = 'stdout'", eid)
    assert bytes(stored) == "head\x00mid\ufffdtail\n".encode()  # the NUL itself is kept
    shown = await run_cli(env, "logs", resp.execution_id, "binary")
    assert shown.code == 0, shown
    assert "head\\x00mid\ufffdtail" in shown.stdout and "e\\x00rr" in shown.stdout
    assert "Traceback" not in shown.stderr


async def test_logs_prints_the_full_output_and_refuses_an_unknown_step(
        engine: Any, env: dict[str, str]) -> None:
    count = 3 * 1024 * 1024 // len(LINE)
    resp = await engine.execute(request([shell("big", lines_command(count))]), wait=True)
    assert resp.result.status.value == "completed"
    assert len(resp.result.steps[0].stdout) < 5000
    full = await run_cli(env, "logs", resp.workflow_id, "big")
    assert full.code == 0, full.stderr[-2000:]
    body = full.stdout.split("==\n", 1)[1]
    assert body.encode() == lines_bytes(count)
    missing = await run_cli(env, "logs", resp.execution_id, "nope")
    assert missing.code == 3 and "no step 'nope'" in missing.stderr


async def test_logs_follow_streams_output_while_the_command_runs(
        engine: Any, env: dict[str, str], tmp_path: Path) -> None:
    gate = tmp_path / "go"
    cmd = (f"echo first-line; while [ ! -e {gate} ]; do sleep 0.05; done; "
           "echo second-line")
    resp = await engine.execute(request([shell("slow", cmd)], mode="background"), wait=False)
    proc = await asyncio.create_subprocess_exec(
        OPSCONDUCTOR, "logs", resp.execution_id, "slow", "--follow", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        seen = b""

        async def first_line() -> bool:
            nonlocal seen
            try:
                seen += await asyncio.wait_for(proc.stdout.read(4096), 0.5)
            except TimeoutError:
                pass
            return b"first-line" in seen

        await wait_for(first_line, what="the first line while the step runs", timeout=30)
        status = await engine.pool.fetchval(
            "SELECT status FROM execution.step_runs WHERE execution_id = $1 AND "
            "step_id = 'slow'", uuid.UUID(resp.execution_id))
        assert status == "running" and b"second-line" not in seen
        gate.touch()
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert (seen + rest).count(b"first-line") == 1 and b"second-line" in rest


# ---------------------------------------------------------------------- malformed input

def _cases(tmp_path: Path, tenant: str) -> dict[str, tuple[str, str]]:
    """name -> (file holding the request, a phrase the refusal must contain)."""
    def base(**kw: Any) -> dict[str, Any]:
        return request([shell("s1", "echo hi")], tenant=tenant, **kw)

    def write(name: str, text: str | bytes) -> str:
        path = tmp_path / f"{name}.json"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return str(path)

    nul_desc = base()
    nul_desc["plan"]["plan"]["steps"][0]["description"] = "restart\x00nginx"
    nul_cmd = request([shell("s1", "echo a\x00b")], tenant=tenant)
    big_cmd = request([shell("s1", "echo " + "x" * (MAX_STRING_CHARS + 10))], tenant=tenant)
    big_meta = base(metadata={"blob": "m" * (MAX_METADATA_CHARS + 10)})
    three_mb_meta = base(metadata={f"k{i}": "v" * 1000 for i in range(3000)})
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = {"d": deep}
    too_deep = base(metadata={"deep": deep})
    surrogate = json.dumps(base()).replace('"step s1"', '"step \\ud800 s1"')
    return {
        "nul_description": (write("nul_desc", json.dumps(nul_desc)), "NUL"),
        "nul_command": (write("nul_cmd", json.dumps(nul_cmd)), "NUL"),
        "nul_actor": (write("nul_actor", json.dumps(base(actor="al\x00ice"))), "NUL"),
        "control_in_id": (write("ctl_id", json.dumps(
            request([shell("s\x1b1", "echo hi")], tenant=tenant))), "control character"),
        "lone_surrogate": (write("surrogate", surrogate), "surrogate"),
        "one_mb_command": (write("big_cmd", json.dumps(big_cmd)), "characters"),
        "big_metadata": (write("big_meta", json.dumps(big_meta)), "metadata"),
        "three_mb_metadata": (write("meta3", json.dumps(three_mb_meta)), "characters"),
        "nested_deep": (write("deep", json.dumps(too_deep)), "nested deeper"),
        "nested_200000": (write("deep200k", "[" * 200_000 + "]" * 200_000), "nested"),
        "not_utf8": (write("latin1", json.dumps(base()).encode().replace(b"echo hi",
                                                                          b"echo h\xe9")),
                     "not UTF-8"),
    }


async def test_malformed_requests_exit_2_without_traceback_and_write_nothing(
        engine: Any, env: dict[str, str], tmp_path: Path) -> None:
    tenant = f"bytes-{uuid.uuid4().hex[:8]}"
    cases = _cases(tmp_path, tenant)
    results = await asyncio.gather(*(run_cli(env, "run", path) for path, _ in cases.values()))
    refused = 0
    for (name, (_, phrase)), cli in zip(cases.items(), results, strict=True):
        assert cli.code == 2, f"{name}: {cli}"
        assert "Traceback" not in cli.stderr + cli.stdout, f"{name}: {cli}"
        assert phrase in cli.stderr, f"{name}: {cli}"
        refused += 1
    for table in ("executions", "idempotency_records", "rbac_audit"):
        rows = await engine.pool.fetchval(
            f"SELECT count(*) FROM execution.{table} WHERE tenant = $1", tenant)
        assert rows == 0, f"{table} has {rows} row(s) for refused requests"
    print(f"\n{refused} malformed requests refused with exit 2, nothing written")


async def test_live_output_of_a_step_over_ssh(engine: Any, ssh_host: Any,
                                              ssh_inventory: Path) -> None:
    """The SSH runner feeds live chunks too: the first line is readable while it runs."""
    from tests.integration.conftest import SSH_ASSET

    folder = Path(tempfile.mkdtemp(prefix="opsc-live-"))
    folder.chmod(0o777)  # the remote user is another account
    gate = folder / "go"
    cmd = (f"echo remote-first; while [ ! -e {gate} ]; do sleep 0.05; done; "
           "echo remote-second")
    resp = await engine.execute(request([shell("ssh", cmd, target=SSH_ASSET)],
                                        mode="background"), wait=False)
    eid = uuid.UUID(resp.execution_id)

    async def live() -> bytes | None:
        rows = await engine.pool.fetch(
            "SELECT data FROM execution.step_output_chunks WHERE execution_id = $1 AND"
            " step_id = 'ssh' ORDER BY seq", eid)
        data = b"".join(bytes(r["data"]) for r in rows)
        return data if b"remote-first" in data else None

    try:
        seen = await wait_for(live, what="live output over SSH", timeout=60)
        assert b"remote-second" not in seen
    finally:
        gate.touch()
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed", result.error
    assert result.steps[0].stdout == "remote-first\nremote-second\n"
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.step_output_chunks WHERE execution_id = $1", eid) == 0
