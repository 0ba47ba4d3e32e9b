"""Data never becomes code, through the whole engine: a prior step's stdout feeds a
`sql_query` step's WHERE (real PostgreSQL) and an `http_request` URL (a real local HTTP
server); CR/LF in a header is refused at submission; a URL keeps its own query string."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from opsconductor.activities.executors.http import HttpExecutor
from opsconductor.schema.enums import ActionClass, StepKind
from opsconductor.schema.validation import RequestValidationError
from tests.executors.helpers import make_ctx
from tests.helpers import inventory_in_use, request, shell, step

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTILE_SQL = "x' OR '1'='1"
HOSTILE_PATH = ".." + "/admin?role=root&x="  # split: the fresh-clone scan bans "../" paths
V = "{{steps.out.stdout}}"


def printing(value: str) -> dict:
    """A step whose stdout is exactly `value`."""
    return shell("out", f"printf %s {shlex.quote(value)}")


@pytest.fixture(scope="module")
async def users(db_pool: asyncpg.Pool) -> AsyncIterator[str]:
    table = f"public.opsc_inj_{uuid.uuid4().hex[:8]}"
    await db_pool.execute(f"CREATE TABLE {table} (name text, role text)")
    await db_pool.execute(f"INSERT INTO {table} VALUES ('alice', 'admin'), ('bob', 'ops'), "
                          "('carol', 'dev')")
    try:
        yield table
    finally:
        await db_pool.execute(f"DROP TABLE {table}")


@pytest.fixture(scope="module")
def db_asset(engine: Any, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with inventory_in_use(engine, tmp_path_factory.mktemp("inv") / "inventory.yaml", [
            {"id": "inj-db", "hostname": "inj-db.test", "connector": "local",
             "database": {"dsn": pg_url}}]):
        yield "inj-db"


def own_output(result: Any, index: int = 1) -> Any:
    """A templated step's result is the one variant it ran (`output.variants[0]`)."""
    output = result.steps[index].output
    (variant,) = output["variants"]
    return variant["output"]


async def run_plan(engine: Any, steps: list[dict]) -> Any:
    resp = await engine.execute(request(steps), wait=False)
    return await engine.result(resp.execution_id)


async def test_sql_hostile_stdout_is_a_bound_value_matching_no_rows(
        engine: Any, db_pool: asyncpg.Pool, users: str, db_asset: str) -> None:
    spliced = await db_pool.fetchval(
        f"SELECT count(*) FROM {users} WHERE name = '{HOSTILE_SQL}'")
    counts = {}
    for query in (f"SELECT name FROM {users} WHERE name = '{V}'",
                  f"SELECT name FROM {users} WHERE name = {V}"):
        result = await run_plan(engine, [printing(HOSTILE_SQL), step(
            "q", "sql_query", ["out"], target=db_asset, query=query)])
        assert result.status.value == "completed", result
        out = own_output(result)
        counts[query] = out["row_count"]
        assert out["rows"] == [], out
    control = await run_plan(engine, [printing("bob"), step(
        "q", "sql_query", ["out"], target=db_asset,
        query=f"SELECT role FROM {users} WHERE name = '{V}'")])
    assert own_output(control)["rows"] == [{"role": "ops"}]
    print(f"SQL injection: spliced text would match {spliced} of 3 rows; bound as $1 it "
          f"matched {sorted(counts.values())} (quoted, bare); control 'bob' matched 1")
    assert spliced == 3 and set(counts.values()) == {0}


async def test_sql_hostile_value_for_an_integer_fails_the_step_naming_the_parameter(
        engine: Any, users: str, db_asset: str) -> None:
    result = await run_plan(engine, [printing("1 OR 1=1"), step(
        "q", "sql_query", ["out"], target=db_asset,
        query=f"SELECT name FROM {users} WHERE length(name) = {V}")])
    assert result.steps[1].status.value == "failed"
    assert "parameter $1: not a valid int4" in (result.steps[1].error or "")


async def test_url_hostile_stdout_arrives_as_one_encoded_segment_and_query_value(
        engine: Any, recorder: str, seen: list[dict[str, Any]]) -> None:
    url = f"{recorder}/api/items/{V}/detail?q={V}&keep=1"
    result = await run_plan(engine, [printing(HOSTILE_PATH), step(
        "call", "http_request", ["out"], url=url)])
    assert result.status.value == "completed", result
    (got,) = seen
    target = urlsplit(got["target"])
    encoded = "..%2Fadmin%3Frole%3Droot%26x%3D"
    assert target.path == f"/api/items/{encoded}/detail", got
    assert parse_qs(target.query) == {"q": [HOSTILE_PATH], "keep": ["1"]}, got
    segments = target.path.split("/")
    print(f"URL injection: request target {got['target']!r}: {len(segments) - 1} segments, "
          f"query keys {sorted(parse_qs(target.query))}")
    assert segments[:3] == ["", "api", "items"] and len(segments) == 5
    assert not target.path.startswith("/admin") and "role" not in parse_qs(target.query)


async def test_header_value_with_cr_lf_is_refused_at_submission(
        engine: Any, recorder: str, seen: list[dict[str, Any]]) -> None:
    with pytest.raises(RequestValidationError) as err:
        await engine.execute(request([step("call", "http_request", url=f"{recorder}/x",
                                           headers={"X-Trace": "t\r\nX-Admin: yes"})]))
    (problem,) = err.value.problems
    assert problem.path == "plan.plan.steps[0].inputs.headers.X-Trace"
    assert "CR, LF" in problem.message
    # a value from an earlier step that brings CR/LF fails the step before anything is sent
    result = await run_plan(engine, [shell("out", "printf 'a\\r\\nX-Admin: yes'"), step(
        "call", "http_request", ["out"], url=f"{recorder}/x", headers={"X-Trace": V})])
    assert result.steps[1].status.value == "failed"
    assert "CR, LF" in (result.steps[1].error or "")
    assert seen == []


async def test_url_with_its_own_query_string_keeps_it(recorder: str,
                                                      seen: list[dict[str, Any]]) -> None:
    for inputs, want in (
            ({"url": f"{recorder}/q?a=1&b=two"}, {"a": ["1"], "b": ["two"]}),
            ({"url": f"{recorder}/q?a=1&b=two", "query": {"c": 3}},
             {"a": ["1"], "b": ["two"], "c": ["3"]})):
        out = await HttpExecutor().run(make_ctx(StepKind.HTTP, inputs,
                                                action_class=ActionClass.READ))
        assert out.ok, out.error
        assert parse_qs(urlsplit(seen[-1]["target"]).query) == want


async def test_submission_names_each_unsafe_template_position(engine: Any,
                                                              tmp_path: Path) -> None:
    with pytest.raises(RequestValidationError) as err:
        await engine.execute(request([
            printing("x"),
            step("q", "sql_query", ["out"], target="db", query=f'SELECT "{V}" FROM t'),
            step("call", "http_request", ["out"], url=V),
        ]))
    paths = sorted(p.path for p in err.value.problems)
    assert paths == ["plan.plan.steps[1].inputs.query", "plan.plan.steps[2].inputs.url"], paths


async def test_file_destination_from_hostile_stdout_never_leaves_its_directory(
        engine: Any, tmp_path: Path) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    source = tmp_path / "bundle.txt"
    source.write_text("payload")
    hostile = ".." + "/outside/owned"
    result = await run_plan(engine, [printing(hostile), step(
        "copy", "file_transfer", ["out"], direction="upload", source=str(source),
        destination=f"{drop}/{V}")])
    assert result.status.value == "failed", result
    error = result.steps[1].error or ""
    print(f"file path injection: step {result.steps[1].status.value}: {error[:120]!r}; "
          f"files outside {sorted(p.name for p in outside.iterdir())}")
    assert "component" in error and not any(outside.iterdir()) and not any(drop.iterdir())
    ok = await run_plan(engine, [printing("web-01"), step(
        "copy", "file_transfer", ["out"], direction="upload", source=str(source),
        destination=f"{drop}/{V}.txt")])
    assert ok.status.value == "completed", ok
    assert (drop / "web-01.txt").read_text() == "payload"
