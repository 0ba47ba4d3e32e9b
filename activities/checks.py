"""Checks: a step's `success_criteria` and `preconditions`, the plan's `safety_checks`, and the
`validate` tool's checks, in one small expression form.

Expression form (one check per string)::

    exit_code == 0                      FIELD OP VALUE
    stdout matches 'active \\(running\\)'
    stderr not contains "error"
    status == 200                       HTTP status of an http_request step
    rows >= 1                           row count of a sql_query step
    output.state == "ok"                a key inside the step's output
    json $.ok == true                   JSON path into the HTTP body (else into the output)
    json $.items[0].id exists
    step_001.exit_code == 0             any of the above about an earlier step (validate)
    command: test -f /etc/nginx/nginx.conf   run on the asset; passes when it exits 0

* FIELD: exit_code, stdout, stderr, output[.key...], status (HTTP status, else the step's
  status), rows / row_count, body, elapsed_ms, bytes, sha256, truncated, error.
* OP: == != > >= < <= | matches (regex search, multi-line) | contains | not matches |
  not contains | exists | not exists. Numbers compare as numbers.
* `matches` takes an RE2 regex (https://github.com/google/re2/wiki/Syntax: Python's syntax
  without backreferences and lookaround; `\\z` for Python's `\\Z`), run by RE2 in time linear
  in the input, so no pattern can stall a worker (`(a+)+$` over 1 MB takes milliseconds). A
  pattern RE2 cannot compile is refused at submission, naming why.
* VALUE: a number, 'quoted' or "quoted" text, true, false, null, or a bare word.
* Aliases planners write: "exit code 0", "exit code is 0", "return code 0" (exit_code == 0),
  "status code 200", "http status 200" (status == 200).
* JSON path subset: `$`, `.name`, `['name']`, `["name"]`, `[N]` (N may be negative).

Dict forms: {"expr": "..."} (or "check"), {"command": "..."}, {"step": "step_001", "expr":
"..."}, and JSON assertions {"path": "$.status", "equals": "ok"} (also not_equals, exists,
contains, matches, gt, gte, lt, lte).

Anything else — free text such as "host reachable" or "Root filesystem has more than 10%
free" — is *informational*: recorded with `informational=True`, never evaluated, and shown as
"not checked" (it does not fail the step, and it is never reported as passed).

Bounds (every check, wherever it stands): a check is evaluated off the event loop, in a
small thread pool of its own (`CHECK_THREADS`), and fails closed with its reason when it
takes longer than `CHECK_TIMEOUT_SECONDS` (10 s, counted from its hand-over to the pool)
or when the text it reads is longer than `MAX_CHECK_INPUT_CHARS` (16 Mi characters, above
the 10 MiB output cap, so only a value that is not a step's capped output can hit it); a
`matches` pattern is at most `MAX_PATTERN_CHARS` (4096) characters and RE2 compiles it
within `REGEX_MAX_MEM` (8 MiB).

Checks fail closed: an expression (a name followed by a symbolic operator, or a dotted or
underscored name with any operator) over an unknown field, or naming a step it cannot read,
is refused at submission (`expression_problems`, with its field path) and fails if it ever
reaches evaluation — `exit_cod == 0` never passes on exit code 1.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import re2

from opsconductor.activities.check_commands import COMMAND_CHECK, command_of
from opsconductor.schema.assets import Asset
from opsconductor.schema.config import Settings
from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind
from opsconductor.schema.request import SafetyCheck
from opsconductor.schema.spec import StepSpec

if TYPE_CHECKING:
    from opsconductor.activities.authorization import ActionGate

__all__ = ["command_of"]  # re-exported: callers read it here with the other check helpers

FIELDS = frozenset({"exit_code", "stdout", "stderr", "output", "status", "http_status", "rows",
                    "row_count", "body", "elapsed_ms", "bytes", "sha256", "truncated", "error",
                    "step_status"})
_MISSING = object()
T = TypeVar("T")

CHECK_TIMEOUT_SECONDS = 10.0
CHECK_THREADS = 2
MAX_CHECK_INPUT_CHARS = 16 * 1024 * 1024
MAX_PATTERN_CHARS = 4096
REGEX_MAX_MEM = 8 * 1024 * 1024


# ---------------------------------------------------------------- regexes: RE2, linear time

class RegexRefused(ValueError):
    """A `matches` pattern RE2 cannot run (backreference, lookaround, too long ...)."""


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the refusal is reported to the plan's author, not to stderr
    options.max_mem = REGEX_MAX_MEM
    return options


_RE2_OPTIONS = _re2_options()
_RE2_HINTS = (("\\Z", "use \\z for the end of the text"),
              ("(?=", "lookahead is not supported"), ("(?!", "lookahead is not supported"),
              ("(?<=", "lookbehind is not supported"), ("(?<!", "lookbehind is not supported"))


@functools.lru_cache(maxsize=256)
def compile_regex(pattern: str) -> Any:
    """The pattern compiled by RE2, multi-line like the check language's `matches` always
    was; RegexRefused naming why when RE2 cannot run it."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexRefused(f"regex of {len(pattern)} characters; at most {MAX_PATTERN_CHARS}")
    try:
        return re2.compile("(?m)" + pattern, _RE2_OPTIONS)
    except re2.error as err:
        why = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        hint = next((h for needle, h in _RE2_HINTS if needle in pattern), "")
        if re.search(r"\\[1-9]|\(\?P=", pattern):
            hint = "backreferences are not supported"
        raise RegexRefused(f"RE2 cannot compile {pattern!r}: {why}"
                           + (f" ({hint}; RE2 runs in linear time)" if hint else "")) from None


def regex_problem(pattern: Any) -> str | None:
    """Why a `matches` pattern is refused at submission, or None."""
    try:
        compile_regex(str(pattern))
    except RegexRefused as err:
        return str(err)
    return None


# ---------------------------------------------------------------- off the event loop

_pool: ThreadPoolExecutor | None = None


def _check_pool() -> ThreadPoolExecutor:
    """The checks' own threads: a slow check never holds the event loop or the default
    executor that the rest of the worker uses."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="opsc-check")
    return _pool


async def off_loop(fn: Callable[..., T], *args: Any,
                   timeout: float = CHECK_TIMEOUT_SECONDS) -> T:
    """`fn(*args)` in the checks' thread pool, at most `timeout` s (TimeoutError after)."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(_check_pool(), fn, *args), timeout)


def _timed_out(expr: Any, timeout: float) -> CheckResult:
    return CheckResult(False, _label(expr), f"check did not finish within {timeout:g}s; "
                       "failed closed")


def _label(expr: Any) -> str:
    if isinstance(expr, Mapping):
        for key in ("expr", "check", "criteria", "command"):
            if isinstance(expr.get(key), str):
                return str(expr[key])
        return str(dict(expr))
    return str(expr)


async def evaluate_bounded(expr: str | Mapping[str, Any], context: Mapping[str, Any], *,
                           timeout: float = CHECK_TIMEOUT_SECONDS) -> CheckResult:
    """`evaluate` off the event loop and bounded in time; never raises."""
    try:
        return await off_loop(evaluate, expr, context, timeout=timeout)
    except TimeoutError:
        return _timed_out(expr, timeout)


async def assert_json_bounded(doc: Any, assertions: Sequence[Mapping[str, Any]], *,
                              timeout: float = CHECK_TIMEOUT_SECONDS) -> list[CheckResult]:
    """HTTP assertions (`assert_json`) off the event loop, bounded in time together."""
    def run() -> list[CheckResult]:
        return [assert_json(doc, a) for a in assertions]

    if not assertions:
        return []
    try:
        return await off_loop(run, timeout=timeout)
    except TimeoutError:
        return [_timed_out({"expr": f"json {a.get('path', '$')}"}, timeout) for a in assertions]


@dataclass
class CheckResult:
    passed: bool
    expr: str
    detail: str
    informational: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the result a check looks at

def result_context(result: Any) -> dict[str, Any]:
    """Flatten a step result (StepOutcome, StepResult, or its dict) into check fields."""
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        else:
            result = dict(vars(result))
    if "json" in result and "steps" in result:
        return dict(result)  # already a context
    output = result.get("output")
    if isinstance(output, Mapping) and set(output) == {"result", "checks"}:
        output = output["result"]  # a step with its own checks: read its result, not the wrapper
    ctx: dict[str, Any] = {
        "exit_code": result.get("exit_code"),
        "stdout": result.get("stdout"),
        "stderr": result.get("stderr"),
        "error": result.get("error"),
        "output": output,
        "step_status": result.get("status") if isinstance(result.get("status"), str) else None,
    }
    ctx["status"] = ctx["step_status"]
    ctx["json"] = output
    if isinstance(output, Mapping):
        if isinstance(output.get("status"), int) and "body" in output:  # an HTTP result
            ctx["status"] = ctx["http_status"] = output["status"]
            ctx["body"] = output["body"]
            ctx["json"] = output["body"]
        if "row_count" in output:
            ctx["rows"] = ctx["row_count"] = output["row_count"]
        for key in ("elapsed_ms", "bytes", "sha256", "truncated"):
            if key in output:
                ctx[key] = output[key]
    if isinstance(result.get("status"), int):  # a bare {"status": 200, ...} context
        ctx["status"] = ctx["http_status"] = result["status"]
    for key in ("rows", "row_count", "body", "json", "elapsed_ms", "http_status"):
        if key in result and key not in ctx:
            ctx[key] = result[key]
    return ctx


# ---------------------------------------------------------------- JSON path

_PATH_TOKEN = re.compile(r"""\.([A-Za-z_][\w\-]*)|\[\s*(-?\d+)\s*\]|\[\s*'([^']*)'\s*\]"""
                         r"""|\[\s*"([^"]*)"\s*\]""")


class PathError(ValueError):
    pass


def parse_path(path: str) -> list[str | int]:
    path = path.strip()
    if not path.startswith("$"):
        raise PathError(f"JSON path {path!r} must start with $")
    parts: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m:
            raise PathError(f"JSON path {path!r}: cannot parse at {path[pos:]!r}")
        name, index, q1, q2 = m.groups()
        parts.append(int(index) if index is not None else (name or q1 or q2 or ""))
        pos = m.end()
    return parts


def json_path(doc: Any, path: str) -> Any:
    """The value at `path`, or raise KeyError when it is absent."""
    cur = doc
    for part in parse_path(path):
        if isinstance(part, int):
            if not isinstance(cur, list) or not -len(cur) <= part < len(cur):
                raise KeyError(path)
            cur = cur[part]
        else:
            if not isinstance(cur, Mapping) or part not in cur:
                raise KeyError(path)
            cur = cur[part]
    return cur


# ---------------------------------------------------------------- comparison

_OP = (r"(?P<op>==|!=|>=|<=|=~|>|<|not\s+matches|matches|not\s+contains|contains"
       r"|not\s+exists|exists)")
# A word operator stands apart from the field (`stdout matches x`), so a planner's token such
# as `service_nginx_exists` is prose, not the field `service_nginx_` with `exists`.
_FIELD_EXPR = re.compile(
    r"^\s*(?P<lhs>[A-Za-z_][\w.:\-]*)(?:\s*(?P<sym>==|!=|>=|<=|=~|>|<)|\s+(?P<word>"
    r"not\s+matches|matches|not\s+contains|contains|not\s+exists|exists)(?=\s|$))"
    r"\s*(?P<value>.*?)\s*$", re.IGNORECASE | re.DOTALL)


def _op(m: re.Match[str]) -> str:
    """The operator of a `_FIELD_EXPR` match (symbolic or word)."""
    return m.group("sym") or m.group("word")
_JSON_EXPR = re.compile(r"^\s*(?:(?P<step>[\w.:\-]+)\.)?json\s+(?P<path>\$\S*)\s*" + _OP
                        + r"\s*(?P<value>.*?)\s*$", re.IGNORECASE | re.DOTALL)
_ALIASES = [
    (re.compile(r"^\s*(?:exit|return)[ _]code\s*(?:is|=|==|:)?\s*(-?\d+)\s*$", re.I), "exit_code"),
    (re.compile(r"^\s*(?:http\s+)?status(?:[ _]code)?\s*(?:is|=|==|:)?\s*(\d{3})\s*$", re.I),
     "status"),
]
_COMMAND = COMMAND_CHECK


def parse_value(text: str) -> Any:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1].replace("\\" + t[0], t[0])
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        f = float(str(v).strip())
    except ValueError:
        return None
    return None if math.isnan(f) else f


def _equal(actual: Any, expected: Any) -> bool:
    if actual == expected and type(actual) is type(expected):
        return True
    na, ne = _number(actual), _number(expected)
    if na is not None and ne is not None:
        return na == ne
    if isinstance(actual, bool) or isinstance(expected, bool):
        return str(actual).lower() == str(expected).lower()
    if isinstance(actual, str) or isinstance(expected, str):
        return str(actual).strip() == str(expected)
    return bool(actual == expected)


def compare(actual: Any, op: str, expected: Any) -> tuple[bool, str]:
    """(passed, why) for one comparison; `actual` may be _MISSING."""
    op = " ".join(op.lower().split())
    if op in ("exists", "not exists"):
        present = actual is not _MISSING and actual is not None
        return (present if op == "exists" else not present), ("present" if present else "absent")
    if actual is _MISSING:
        return False, "value not available"
    if isinstance(actual, str) and len(actual) > MAX_CHECK_INPUT_CHARS:
        return False, (f"the value is {len(actual)} characters, over the check bound of "
                       f"{MAX_CHECK_INPUT_CHARS}; failed closed")
    shown = _short(actual)
    if op == "==":
        return _equal(actual, expected), f"got {shown}"
    if op == "!=":
        return not _equal(actual, expected), f"got {shown}"
    if op in (">", ">=", "<", "<="):
        a, e = _number(actual), _number(expected)
        if a is None or e is None:
            return False, f"cannot compare {shown} with {expected!r} as numbers"
        ok = {">": a > e, ">=": a >= e, "<": a < e, "<=": a <= e}[op]
        return ok, f"got {shown}"
    if op in ("matches", "=~", "not matches"):
        try:
            found = compile_regex(str(expected)).search("" if actual is None else str(actual))
        except RegexRefused as err:
            return False, str(err)
        ok = bool(found) if op != "not matches" else not found
        return ok, (f"matched {found.group(0)[:80]!r}" if found else "no match")
    if op in ("contains", "not contains"):
        if isinstance(actual, Mapping | list | tuple):
            has = expected in actual
        else:
            has = str(expected) in ("" if actual is None else str(actual))
        return (has if op == "contains" else not has), ("found" if has else "not found")
    return False, f"unknown operator {op!r}"


def _short(v: Any, limit: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- evaluation

def _split_step(lhs: str, steps: Mapping[str, Any]) -> tuple[str | None, str]:
    """'step_001.exit_code' -> ('step_001', 'exit_code'), for the longest known step id."""
    best: str | None = None
    for step_id in steps:
        if lhs.startswith(step_id + ".") and (best is None or len(step_id) > len(best)):
            best = step_id
    if best is None:
        return None, lhs
    return best, lhs[len(best) + 1:]


def _lookup(ctx: Mapping[str, Any], field: str) -> Any:
    head, *rest = field.split(".")
    head = head.lower()
    if head not in ctx or (ctx[head] is None and head != "output"):
        return _MISSING
    cur = ctx[head]
    for key in rest:
        if isinstance(cur, Mapping) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and key.lstrip("-").isdigit() and -len(cur) <= int(key) < len(
                cur):
            cur = cur[int(key)]
        else:
            return _MISSING
    return cur


def is_command_check(check: str | Mapping[str, Any]) -> bool:
    if isinstance(check, Mapping):
        return "command" in check
    return bool(_COMMAND.match(check))


def _context_for(step: str | None, context: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if step is None:
        return context
    steps = context.get("steps") or {}
    return result_context(steps[step]) if step in steps else None


def evaluate(expr: str | Mapping[str, Any], context: Mapping[str, Any]) -> CheckResult:
    """Evaluate one check against a result context (see `result_context`); never raises.

    `context` may carry `steps`: {step_id: result} for step-qualified expressions.
    """
    if isinstance(expr, Mapping):
        return _evaluate_dict(expr, context)
    text = str(expr).strip()
    if _COMMAND.match(text):
        return CheckResult(False, text, "command checks need run_check (they run on the asset)")
    steps: Mapping[str, Any] = context.get("steps") or {}
    for pattern, field in _ALIASES:
        m = pattern.match(text)
        if m:
            actual = _lookup(context, field)
            ok, why = compare(actual, "==", int(m.group(1)))
            return CheckResult(ok, text, f"{field} {why}")
    m = _JSON_EXPR.match(text)
    if m:
        step = m.group("step")
        if step is not None and step not in steps:
            return CheckResult(False, text, f"no earlier step {step!r}")
        ctx = _context_for(step, context)
        assert ctx is not None
        doc = ctx.get("json", _MISSING)
        try:
            actual = _MISSING if doc is _MISSING else json_path(doc, m.group("path"))
        except KeyError:
            actual = _MISSING
        except PathError as err:
            return CheckResult(False, text, str(err))
        ok, why = compare(actual, m.group("op"), parse_value(m.group("value")))
        return CheckResult(ok, text, f"{m.group('path')}: {why}")
    m = _FIELD_EXPR.match(text)
    if m:
        lhs = m.group("lhs")
        step, field = _split_step(lhs, steps)
        if field.split(".")[0].lower() not in FIELDS:
            if step is None and "." in lhs and steps:
                return CheckResult(False, text, f"no earlier step {lhs.split('.')[0]!r} "
                                   f"(known: {', '.join(steps) or 'none'})")
            if _strict(lhs, _op(m)):
                return CheckResult(False, text, _unknown_field(field))
            return CheckResult(True, text, f"informational: {field.split('.')[0]!r} is not a "
                               "check field; recorded, not evaluated", informational=True)
        op, value = _op(m), m.group("value")
        if op.lower().strip().endswith("exists") and value:
            return CheckResult(True, text, "informational: not a check expression",
                               informational=True)
        ctx = _context_for(step, context)
        assert ctx is not None
        actual = _lookup(ctx, field)
        ok, why = compare(actual, op, parse_value(value))
        if actual is _MISSING and not op.lower().endswith("exists"):
            why = f"{field} is not available for this result"
        return CheckResult(ok, text, f"{field}: {why}" if step is None else
                           f"{step}.{field}: {why}")
    return CheckResult(True, text, "informational: not a check expression; recorded, not "
                       "evaluated", informational=True)


_SYMBOLIC = frozenset({"==", "!=", ">=", "<=", "=~", ">", "<"})


def _strict(lhs: str, op: str) -> bool:
    """Is this meant as an expression (so an unknown field is an error, not prose)?"""
    return op.strip() in _SYMBOLIC or "." in lhs or "_" in lhs


def _unknown_field(field: str) -> str:
    return (f"unknown check field {field.split('.')[0]!r}; fields: "
            + ", ".join(sorted(FIELDS)))


def _string_problems(text: str, *, own: str | None, readable: set[str],
                     known: set[str]) -> list[str]:
    """Static problems of one expression string: unknown fields, unreadable steps."""
    if _COMMAND.match(text) or any(p.match(text) for p, _ in _ALIASES):
        return []
    m = _JSON_EXPR.match(text)
    if m:
        step = m.group("step")
        return ([] if step is None else _step_problems(step, own, readable, known)) + (
            _pattern_problems(m.group("op"), m.group("value")))
    m = _FIELD_EXPR.match(text)
    if not m:
        return []  # prose: informational
    lhs, op = m.group("lhs"), _op(m)
    regex = _pattern_problems(op, m.group("value"))
    if regex:
        return regex
    step, field = _split_step(lhs, dict.fromkeys(known))
    if step is not None:
        problems = _step_problems(step, own, readable, known)
        if field.split(".")[0].lower() not in FIELDS:
            problems.append(_unknown_field(field))
        return problems
    head = field.split(".")[0]
    if head.lower() in FIELDS or not _strict(lhs, op):
        return []
    if "." in lhs:
        return [f"{head!r} is neither a check field nor a step of this plan; fields: "
                + ", ".join(sorted(FIELDS))]
    return [_unknown_field(field)]


def _pattern_problems(op: str, value: str) -> list[str]:
    """A `matches` whose pattern RE2 refuses (named why)."""
    if " ".join(op.lower().split()) not in ("matches", "=~", "not matches"):
        return []
    why = regex_problem(parse_value(value))
    return [why] if why else []


def _step_problems(step: str, own: str | None, readable: set[str], known: set[str]) -> list[str]:
    if step not in known:
        return [f"no step {step!r} in this plan"]
    if step == own:
        return [f"a check of step {step!r} reads its own result without the step prefix"]
    if step not in readable:
        return [f"step {step!r} may not have run when this check runs: make it a dependency"]
    return []


def check_problems(check: str | Mapping[str, Any], *, own: str | None, readable: set[str],
                   known: set[str]) -> list[str]:
    """Why one check would be wrong at run time (empty: fine), without running anything."""
    if isinstance(check, Mapping):
        problems = []
        if "matches" in check and (why := regex_problem(check["matches"])):
            problems.append(why)
        step = check.get("step")
        if step is not None:
            problems += _step_problems(str(step), own, readable, known)
        for key in ("expr", "check", "criteria"):
            if isinstance(check.get(key), str):
                problems += _string_problems(check[key], own=None, readable=readable | {
                    str(step)} if step else readable, known=known)
        return problems
    return _string_problems(str(check), own=own, readable=readable, known=known)


def expression_problems(spec: Any) -> list[tuple[str, str]]:
    """Every check of a plan parsed before it runs: (field path, problem), in plan order.

    A step's own checks read its own result and its dependencies'; a `validate` step reads
    its dependencies; plan safety checks read the steps run before their stage."""
    known = {s.id for s in spec.steps}
    deps = {s.id: set(s.depends_on) for s in spec.steps}

    def ancestors(step_id: str) -> set[str]:
        seen: set[str] = set()
        todo = list(deps.get(step_id, ()))
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo += deps.get(d, ())
        return seen

    out: list[tuple[str, str]] = []
    for i, s in enumerate(spec.steps):
        base = f"plan.plan.steps[{i}]"
        readable = ancestors(s.id)
        lists = [("preconditions", s.preconditions), ("success_criteria", s.success_criteria)]
        if s.kind.value == "validate":
            lists.append(("inputs.checks", list(s.inputs.get("checks") or [])))
        if s.kind.value == "http":
            for j, a in enumerate(s.inputs.get("assertions") or []):
                if isinstance(a, Mapping) and "matches" in a and (
                        why := regex_problem(a["matches"])):
                    out.append((f"{base}.inputs.assertions[{j}].matches", why))
        for name, checks in lists:
            own = None if name == "inputs.checks" else s.id
            for j, c in enumerate(checks):
                for why in check_problems(c, own=own, readable=readable, known=known):
                    out.append((f"{base}.{name}[{j}]", why))
    for k, sc in enumerate(spec.safety_checks):
        readable = set() if sc.stage == "before" else known
        for why in check_problems(sc.check, own=None, readable=readable, known=known):
            out.append((f"plan.plan.safety_checks[{k}].check", why))
    return out


_ASSERT_OPS = {"equals": "==", "not_equals": "!=", "contains": "contains", "matches": "matches",
               "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def assert_json(doc: Any, assertion: Mapping[str, Any]) -> CheckResult:
    """One HTTP-style assertion: {"path": "$.status", "equals": "ok"} (or another op key)."""
    path = str(assertion.get("path", "$"))
    label = f"json {path} " + " ".join(f"{k} {v!r}" for k, v in assertion.items() if k != "path")
    try:
        actual = json_path(doc, path)
    except KeyError:
        actual = _MISSING
    except PathError as err:
        return CheckResult(False, label, str(err))
    if "exists" in assertion:
        ok, why = compare(actual, "exists" if assertion["exists"] else "not exists", None)
        return CheckResult(ok, label, f"{path}: {why}")
    for key, op in _ASSERT_OPS.items():
        if key in assertion:
            ok, why = compare(actual, op, assertion[key])
            return CheckResult(ok, label, f"{path}: {why}")
    return CheckResult(False, label, "assertion needs one of exists, " + ", ".join(_ASSERT_OPS))


def _evaluate_dict(check: Mapping[str, Any], context: Mapping[str, Any]) -> CheckResult:
    step = check.get("step")
    if step is not None:
        steps = context.get("steps") or {}
        if step not in steps:
            return CheckResult(False, str(check.get("expr", check)), f"no earlier step {step!r}")
        context = {**result_context(steps[step]), "steps": steps}
    if "path" in check:
        return assert_json(context.get("json"), check)
    for key in ("expr", "check", "criteria"):
        if isinstance(check.get(key), str):
            return evaluate(check[key], context)
    if "command" in check:
        return CheckResult(False, f"command: {check['command']}",
                           "command checks need run_check (they run on the asset)")
    return CheckResult(True, str(dict(check)), "informational: no expression in this check",
                       informational=True)


# ---------------------------------------------------------------- running checks

async def run_command_check(command: str, *, asset: Asset | None, gate: ActionGate | None,
                            timeout: float = 30.0,
                            env: Mapping[str, str] | None = None) -> CheckResult:
    """Run `command` on the asset's connector (local machine when None); pass on exit 0.

    Authorized first by `gate`, like any command on a host (a check that does more than read
    needs `shell`); without a gate nothing runs and the check fails: fail closed."""
    from opsconductor.activities.authorization import CHECK_TOOL, ActionDenied
    from opsconductor.activities.executors.base import StepContext
    from opsconductor.activities.executors.local_command import LocalCommandRunner
    from opsconductor.activities.executors.registry import command_runner_for

    label = f"command: {command}"
    if gate is None:
        return CheckResult(False, label, "not run: a command check needs an authorization gate")
    try:
        verdict = await gate.require(tool=CHECK_TOOL,
                                     resource=asset.id if asset is not None else None,
                                     command=command, read_only_expected=True)
    except ActionDenied as err:
        return CheckResult(False, label, f"not run: {err}")
    spec = StepSpec(id="check", tool="shell", kind=StepKind.COMMAND,
                    action_class=ActionClass.READ, inputs={"command": command}, command=command,
                    order=0, failure_handling=FailureHandling.ABORT, idempotent=True)
    ctx = StepContext(execution_id="", workflow_id="", tenant="", environment="", step=spec,
                      inputs={"command": command}, timeout=timeout, asset=asset)
    connector = asset.connector if asset is not None else "local"
    runner = LocalCommandRunner() if connector == "local" else command_runner_for(connector)
    if verdict.probe is not None:  # what was authorized is what runs: the probe's argv
        from opsconductor.activities.executors.probe import run_probe

        outcome = await run_probe(ctx, verdict.probe, connector)
    else:
        outcome = await runner.run(ctx, command, env=dict(env or {}), cwd=None,
                                   timeout=timeout)
    tail = (outcome.stdout.strip() or outcome.stderr.strip())[-300:]
    if outcome.exit_code is None:
        return CheckResult(False, label, outcome.error or "command did not run")
    detail = f"exit {outcome.exit_code}" + (f": {tail}" if tail else "")
    return CheckResult(outcome.exit_code == 0, label, detail)


async def run_check(check: str | Mapping[str, Any], *, context: Mapping[str, Any] | None = None,
                    asset: Asset | None = None, timeout: float = 30.0,
                    gate: ActionGate | None = None) -> CheckResult:
    """Evaluate an expression, or run a command check on `asset` (authorized by `gate`);
    never raises for a bad check."""
    command = command_of(check)
    if command is not None:
        try:
            return await run_command_check(command, asset=asset, gate=gate, timeout=timeout)
        except Exception as err:  # a connector failure is a failed check, not a crash
            return CheckResult(False, f"command: {command}", f"{type(err).__name__}: {err}")
    return await evaluate_bounded(check, context or {})


async def run_checks(checks: list[str | dict[str, Any]], *,
                     context: Mapping[str, Any] | None = None, asset: Asset | None = None,
                     timeout: float = 30.0, gate: ActionGate | None = None) -> list[CheckResult]:
    return [await run_check(c, context=context, asset=asset, timeout=timeout, gate=gate)
            for c in checks]


@dataclass
class SafetyCheckOutcome:
    check: SafetyCheck
    result: CheckResult
    action: Literal["ok", "abort", "warn", "continue"]  # what the workflow should do

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check.model_dump(mode="json"), "result": self.result.to_dict(),
                "action": self.action}


async def run_safety_checks(checks: list[SafetyCheck], stage: str, *,
                            context: Mapping[str, Any] | None = None,
                            timeout: float = 30.0, settings: Settings | None = None,
                            gate: ActionGate | None = None) -> list[SafetyCheckOutcome]:
    """The plan's safety checks of one stage (before / during / after).

    A failed check yields its `failure_action`: abort (stop before any further step acts),
    warn (record an event and go on) or continue (go on silently). Informational checks pass.
    A check's `target` names the asset its command runs on.
    """
    from opsconductor.activities.assets import UnknownAsset, resolve_asset

    out: list[SafetyCheckOutcome] = []
    for check in checks:
        if check.stage != stage:
            continue
        asset = None
        if check.target and command_of(check.check) is not None:
            try:
                asset = await resolve_asset(check.target, settings)
            except UnknownAsset as err:
                out.append(SafetyCheckOutcome(check, CheckResult(False, str(check.check),
                                                                 str(err)), check.failure_action))
                continue
        result = await run_check(check.check, context=context, asset=asset, timeout=timeout,
                                 gate=gate)
        out.append(SafetyCheckOutcome(check, result, "ok" if result.passed
                                      else check.failure_action))
    return out


def should_abort(outcomes: list[SafetyCheckOutcome]) -> bool:
    return any(o.action == "abort" for o in outcomes)
