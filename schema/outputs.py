"""What of a step's output may travel through Temporal: escaped excerpts and bounded results.

A step's full output is stored in Postgres (`execution.step_outputs`); history, the workflow
result and the mirror's step rows carry only what these pure functions keep, so no output,
however large or however binary, can push a payload past Temporal's limits or put a byte
into a text column that PostgreSQL refuses (NUL, lone surrogates). Pure and deterministic:
the workflow uses `bound_results` too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from opsconductor.schema.enums import StepStatus
from opsconductor.schema.messages import StepResult

EXCERPT_CHARS = 4096  # per stream: the whole stream below this, else head + tail
INLINE_OUTPUT_BYTES = 64 * 1024  # a structured output above this travels by reference
RESULT_BUDGET_CHARS = 256 * 1024  # excerpts kept in a workflow result, all steps together
RESULT_MAX_STEPS = 500  # steps listed in a workflow result (failed ones kept first)
ERROR_CHARS = 2000  # a step's error text in a result
SLIM_ERROR_CHARS = 200  # ... once the result's budget is spent
TRUNCATION_MARK = re.compile(r"\n\.\.\.\[truncated (\d+) bytes\]\Z")
# C0 controls but tab, newline and carriage return; DEL; lone surrogates.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """Control characters (NUL included) and lone surrogates as visible escapes (`\\x00`):
    safe in JSON, PostgreSQL text and jsonb, and on a terminal, and still readable."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


def escape_json(value: Any) -> Any:
    """A JSON value with every string (keys too) escaped as `escape_text` does."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(str(k)): escape_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_json(v) for v in value]
    return value


def safe_json_text(value: Any) -> str:
    """`json.dumps(value)` that PostgreSQL's jsonb accepts: no `\u0000`, no lone surrogate."""
    dumped = json.dumps(value, default=str)
    if "\\u0000" in dumped or "\\ud" in dumped:
        dumped = json.dumps(escape_json(json.loads(dumped)))
    return dumped


def escape_bytes(data: bytes) -> str:
    """Stored output bytes as text: invalid UTF-8 and control characters shown escaped."""
    return escape_text(data.decode("utf-8", "backslashreplace"))


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> tuple[str, bool]:
    """(the escaped text, True) when it fits in `limit` characters, else its head and tail
    around a marker and False. Slices before escaping: a 10 MB stream costs two slices."""
    if len(text) <= limit:
        escaped = escape_text(text)
        if len(escaped) <= limit:
            return escaped, True
    half = max(1, limit // 2)
    head, tail = escape_text(text[:half])[:half], escape_text(text[-half:])[-half:]
    omitted = max(0, len(text) - 2 * half)
    return f"{head}\n...[{omitted} characters omitted; the full output is stored]...\n{tail}", \
        False


def truncated_bytes(text: str) -> int:
    """How many bytes a capped stream dropped (its end marker), 0 when it was not capped."""
    found = TRUNCATION_MARK.search(text[-64:])
    return int(found.group(1)) if found else 0


def json_size(value: Any) -> int:
    return 0 if value is None else len(json.dumps(value, default=str))


def _weight(r: StepResult) -> int:
    return len(r.stdout) + len(r.stderr) + len(r.error or "") + json_size(r.output)


def _slim(r: StepResult) -> StepResult:
    """A step without excerpts: status, times, error and its output references remain."""
    output = r.output if json_size(r.output) <= 1024 else None
    error = r.error[:SLIM_ERROR_CHARS] + "…" if r.error and len(r.error) > SLIM_ERROR_CHARS \
        else r.error
    return r.model_copy(update={"stdout": "", "stderr": "", "output": output, "error": error})


def bound_results(results: list[StepResult], *, budget: int = RESULT_BUDGET_CHARS,
                  max_steps: int = RESULT_MAX_STEPS) -> tuple[list[StepResult], int]:
    """The steps a workflow result lists, and how many it leaves out.

    Up to `max_steps` steps in plan order, the ones that did not complete chosen first; their
    excerpts while the running total stays within `budget`, then slimmed; every error cut to
    `ERROR_CHARS`. So the result's size has a bound that does not depend on the plan.
    """
    chosen = results
    if len(results) > max_steps:
        ranked = sorted(range(len(results)),
                        key=lambda i: (results[i].status is StepStatus.COMPLETED, i))
        keep = set(ranked[:max_steps])
        chosen = [r for i, r in enumerate(results) if i in keep]
    kept: list[StepResult] = []
    used = 0
    for r in chosen:
        if r.error and len(r.error) > ERROR_CHARS:
            r = r.model_copy(update={"error": r.error[:ERROR_CHARS] + "…"})
        weight = _weight(r)
        if used + weight > budget:
            r = _slim(r)
            weight = _weight(r)
        used += weight
        kept.append(r)
    return kept, len(results) - len(kept)
