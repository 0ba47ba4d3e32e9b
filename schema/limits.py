"""Size, depth and text limits of a request, checked before anything else looks at it.

A request is walked once, iteratively (a document nested 200,000 deep costs no recursion),
before pydantic or any check that recurses sees it, and before anything is written or
started. Every problem names its field path; a value is never echoed raw (it may hold a NUL
or a lone surrogate that a terminal or PostgreSQL refuses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The whole request, strings and keys together. The plan travels as the workflow's input,
# which Temporal refuses above 2 MiB once encoded; large inputs are compressed
# (`schema.payloads`), and the client checks the encoded spec against the limit as well.
MAX_REQUEST_CHARS = 4 * 1024 * 1024
MAX_PLAN_STEPS = 10_000  # steps in one plan; long runs continue as new (`workflows.handoff`)
MAX_STRING_CHARS = 256 * 1024  # one string (a command, a script, a description)
MAX_METADATA_CHARS = 64 * 1024  # `metadata`, `tags` and `execution_metadata`, each
MAX_DEPTH = 32  # nesting of objects and arrays
MAX_ITEMS = 500_000  # values in the whole request
# Fields that name things (ids, people, places): no control character at all.
IDENTIFIER_KEYS = frozenset({
    "tenant", "actor", "environment", "idempotency_key", "trace_id", "sla_class", "mode",
    "id", "tool", "target", "targets", "step_id", "depends_on", "approver", "asset_id",
})
METADATA_KEYS = frozenset({"metadata", "tags", "execution_metadata"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class LimitProblem:
    path: str
    message: str


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _text_problem(text: str, identifier: bool) -> str | None:
    if "\x00" in text:
        return f"contains a NUL character (at offset {text.index(chr(0))})"
    if _SURROGATE.search(text):
        return "contains a lone UTF-16 surrogate, which is not valid Unicode text"
    if identifier and (found := _CONTROL.search(text)):
        return f"contains the control character U+{ord(found.group()):04X}; names and ids " \
               "may not"
    if len(text) > MAX_STRING_CHARS:
        return f"is {len(text):,} characters long; the limit is {MAX_STRING_CHARS:,}"
    return None


def limit_problems(raw: Any, *, max_request_chars: int = MAX_REQUEST_CHARS,
                   max_depth: int = MAX_DEPTH) -> list[LimitProblem]:
    """Every limit the request breaks. Stops early once the request is known to be too big
    or too deep: the rest of such a request is not worth reading."""
    problems: list[LimitProblem] = []
    total = 0
    items = 0
    sizes: dict[str, int] = {}  # metadata-like subtrees: path -> characters
    stack: list[tuple[str, Any, int, bool, str | None]] = [("", raw, 0, False, None)]
    while stack:
        path, value, depth, ident, meta = stack.pop()
        items += 1
        if depth > max_depth:
            return [*problems, LimitProblem(path or "(request)",
                                            f"nested deeper than {max_depth} levels")]
        if items > MAX_ITEMS:
            return [*problems, LimitProblem("(request)",
                                            f"holds more than {MAX_ITEMS:,} values")]
        if isinstance(value, str):
            total += len(value)
            if meta is not None:
                sizes[meta] = sizes.get(meta, 0) + len(value)
            if (msg := _text_problem(value, ident)) is not None:
                problems.append(LimitProblem(path or "(request)", msg))
        elif isinstance(value, dict):
            for key, child in value.items():
                key_text = str(key)
                total += len(key_text)
                child_path = _join(path, key_text if _clean_key(key_text) else "<key>")
                if (msg := _text_problem(key_text, True)) is not None:
                    problems.append(LimitProblem(child_path, f"the key {msg}"))
                child_meta = meta or (child_path if depth <= 2 and key_text in METADATA_KEYS
                                      else None)
                stack.append((child_path, child, depth + 1, key_text in IDENTIFIER_KEYS,
                              child_meta))
        elif isinstance(value, list | tuple):
            for i, child in enumerate(value):
                stack.append((_join(path, i), child, depth + 1, ident, meta))
        else:
            total += 8
        if total > max_request_chars:
            return [*problems, LimitProblem(
                "(request)", f"is larger than {max_request_chars:,} characters")]
    for where, size in sorted(sizes.items()):
        if size > MAX_METADATA_CHARS:
            problems.append(LimitProblem(where, f"holds {size:,} characters; the limit is "
                                                f"{MAX_METADATA_CHARS:,}"))
    return problems


def _clean_key(key: str) -> bool:
    return not _CONTROL.search(key) and not _SURROGATE.search(key) and len(key) <= 200
