"""Template values rendered by where they land (pure: no servers), and the positions no
substitution can make safe, refused at submission with their field paths."""

from __future__ import annotations

from typing import Any

import pytest

from opsconductor.schema.spec import step_specs
from opsconductor.schema.template_contexts import render_url, sql_problems
from opsconductor.schema.templates import TemplateError, expand
from opsconductor.schema.validation import RequestValidationError, validate_request
from tests.helpers import request, shell, step

HOSTILE_SQL = "x' OR '1'='1"
HOSTILE_PATH = ".." + "/admin?role=root&x="  # split: the fresh-clone scan bans "../" paths


def rendered(tool: str, inputs: dict[str, Any], value: Any) -> dict[str, Any]:
    """The inputs of `tool` as the step activity renders them, `{{steps.s1.stdout}}` = value."""
    req = validate_request(request([shell("s1", "echo"), step("s2", tool, ["s1"], **inputs)]))
    spec = step_specs(req)[1]
    (variant,) = expand(spec.id, spec.inputs, spec.command, spec.target, spec.placeholders,
                        {"s1": {"stdout": value, "exit_code": 0}}, kind=spec.kind.value)
    return variant.inputs


def problems(steps: list[dict]) -> list[tuple[str, str]]:
    with pytest.raises(RequestValidationError) as err:
        validate_request(request(steps))
    return [(p.path, p.message) for p in err.value.problems]


V = "{{steps.s1.stdout}}"


def test_sql_placeholders_become_bound_parameters_also_inside_quotes() -> None:
    cases = {
        f"SELECT * FROM t WHERE name = '{V}'": "SELECT * FROM t WHERE name = $2",
        f"SELECT * FROM t WHERE name = {V} AND id = $1": "SELECT * FROM t WHERE name = $2 "
                                                         "AND id = $1",
        f"SELECT * FROM t WHERE a = E'{V}' OR b = '{V}'": "SELECT * FROM t WHERE a = $2 OR b = $3",
        f"SELECT 'it''s', \"{V[2:-2]}\" || {V} -- {{ not one\n": "SELECT 'it''s', "
                                                            f"\"{V[2:-2]}\" || $2 -- {{ not one\n",
    }
    for query, want in cases.items():
        out = rendered("sql_query", {"target": "db", "query": query, "params": [7]}, HOSTILE_SQL)
        assert out["query"] == want, query
        assert out["params"][0] == 7 and out["params"][1:] == [HOSTILE_SQL] * (len(
            out["params"]) - 1)
        assert HOSTILE_SQL not in out["query"]
    out = rendered("psql", {"target": "db", "sql": f"SELECT 1 WHERE '{V}' = 'a'"}, 42)
    assert out["query"] == "SELECT 1 WHERE $1 = 'a'" and out["params"] == ["42"]


def test_sql_positions_that_cannot_be_bound_are_refused_at_submission() -> None:
    found = problems([shell("s1", "echo"), step("s2", "sql_query", ["s1"], target="db", query=(
        f'SELECT "{V}" FROM t WHERE x LIKE \'%{V}%\' -- {V}\n AND y = $$ {V} $$'))])
    paths = {p for p, _ in found}
    assert paths == {"plan.plan.steps[1].inputs.query"}, found
    text = " | ".join(m for _, m in found)
    for why in ("quoted SQL identifier", "longer SQL string literal", "SQL comment",
                "dollar-quoted"):
        assert why in text, text
    assert sql_problems("SELECT $1, $tag$ body $tag$, 'a''b', E'\\'' FROM t") == []
    (whole,) = sql_problems(f" {V};")
    assert "whole SQL statement" in whole.message


def test_url_values_are_encoded_per_component() -> None:
    out = rendered("http_request", {"url": f"https://api.example.com/items/{V}/x?q={V}&k=1#{V}"},
                   HOSTILE_PATH)
    enc = "..%2Fadmin%3Frole%3Droot%26x%3D"
    assert out["url"] == f"https://api.example.com/items/{enc}/x?q={enc}&k=1#{enc}"
    # A host placeholder is a fixed-structure position: hostnames and addresses only.
    assert render_url("http://{{h}}:{{p}}/", {"{{h}}": "fe80::1", "{{p}}": 8443}.__getitem__) \
        == "http://[fe80::1]:8443/"
    for bad_host in ("evil.com/x?", "a@b", "host name", "-x"):
        with pytest.raises(ValueError, match="hostname"):
            render_url("http://{{h}}/", {"{{h}}": bad_host}.__getitem__)
    with pytest.raises(TemplateError, match="segment"):
        rendered("http_request", {"url": f"https://api.example.com/items/{V}/x"}, "..")
    # api-request builds its URL from host + path: the same rules apply to the result.
    out = rendered("api-request", {"host": "svc.internal", "path": f"/v1/{V}",
                                   "params": {"q": V}}, HOSTILE_PATH)
    assert out["url"] == f"http://svc.internal/v1/{enc}" and out["query"] == {"q": HOSTILE_PATH}


def test_url_positions_from_data_are_refused_at_submission() -> None:
    base = [shell("s1", "echo")]
    cases = {
        V: "come from data", f"{V}/status": "come from data",
        f"http{V}://h/": "scheme", f"https://u:{V}@h/": "userinfo",
        f"https://h:80{V}/": "whole port",
    }
    for url, why in cases.items():
        found = problems([*base, step("s2", "http_request", ["s1"], url=url)])
        assert found and all(p == "plan.plan.steps[1].inputs.url" for p, _ in found), found
        assert why in found[0][1], (url, found)
    # api-request: the placeholder is reported at the planner's own field
    found = problems([*base, step("s2", "api-request", ["s1"], url=V)])
    assert found[0][0] == "plan.plan.steps[1].inputs.url"


def test_headers_refuse_cr_lf_and_templated_names() -> None:
    found = problems([step("s1", "http_request", url="https://h/", headers={
        "X-Trace": "a\r\nX-Admin: 1"})])
    assert found == [("plan.plan.steps[0].inputs.headers.X-Trace",
                      "a header value holds CR, LF or NUL (it would split the request)")]
    found = problems([shell("s1", "echo"), step("s2", "http_request", ["s1"], url="https://h/",
                                                headers={f"X-{V}": "1"})])
    assert found[0][0] == f"plan.plan.steps[1].inputs.headers.X-{V}"
    assert "header name" in found[0][1]
    out = rendered("http_request", {"url": "https://h/", "headers": {"X-Id": f"id-{V}"}}, "42")
    assert out["headers"] == {"X-Id": "id-42"}
    with pytest.raises(TemplateError, match="CR, LF"):
        rendered("http_request", {"url": "https://h/", "headers": {"X-Id": V}}, "a\r\nB: c")


def test_json_bodies_take_structural_values() -> None:
    out = rendered("http_request", {"url": "https://h/", "method": "POST",
                                    "json": {"name": V, "note": f"by {V}", "n": [V]}},
                   ["a", {"b": 1}])
    assert out["json"] == {"name": ["a", {"b": 1}], "note": "by a,{'b': 1}",
                           "n": [["a", {"b": 1}]]}
    hostile = '", "admin": true, "x": "'
    out = rendered("http_request", {"url": "https://h/", "method": "POST",
                                    "body": f'{{"name": "{V}", "count": {V}}}'}, hostile)
    assert out["body"] == {"name": hostile, "count": hostile}  # a value, never JSON syntax
    found = problems([shell("s1", "echo"), step("s2", "http_request", ["s1"], url="https://h/",
                                                method="POST", body=f"a={V}&b=1")])
    assert found[0][0] == "plan.plan.steps[1].inputs.body" and "not JSON" in found[0][1]


def test_command_quoting_is_unchanged() -> None:
    req = validate_request(request([shell("s1", "echo"), shell("s2", f"echo {V}", ["s1"])]))
    spec = step_specs(req)[1]
    (variant,) = expand(spec.id, spec.inputs, spec.command, spec.target, spec.placeholders,
                        {"s1": {"stdout": "a; rm -rf /"}}, kind=spec.kind.value)
    assert variant.command == "echo 'a; rm -rf /'"


FT = {"direction": "upload", "source": "/srv/bundles/app.tar"}


def test_file_path_values_stay_one_component() -> None:
    out = rendered("file_transfer", {**FT, "destination": f"/var/tmp/{V}.log"}, "web-01")
    assert out["destination"] == "/var/tmp/web-01.log" and out["source"] == FT["source"]
    hostile = ["..", ".", "", ".." + "/etc/cron.d/x", "a/b", "a\\b", "x\x00y", "x\ny",
               "/etc/shadow"]
    refused = 0
    for value in hostile:
        with pytest.raises(TemplateError, match="component"):
            rendered("file_transfer", {**FT, "destination": f"/var/tmp/{V}"}, value)
        refused += 1
    # A value may be part of a component ("..x" is a name), never the whole '.' or '..'.
    assert rendered("file_transfer", {**FT, "destination": f"/var/tmp/{V}x"},
                    "..")["destination"] == "/var/tmp/..x"
    print(f"file paths: {refused} of {len(hostile)} hostile values refused")
    assert refused == len(hostile)


def test_file_paths_starting_with_data_are_refused_at_submission() -> None:
    base = [shell("s1", "echo")]
    for path in (V, f"{V}/x", f"~{V}/x", f"tmp/{V}"):
        found = problems([*base, step("s2", "file_transfer", ["s1"],
                                      **{**FT, "destination": path})])
        assert found and "come from data" in found[0][1], (path, found)
        assert found[0][0].endswith("destination"), found
    validate_request(request([*base, step("s2", "file_transfer", ["s1"],
                                          **{**FT, "destination": f"~/drop/{V}"})]))
