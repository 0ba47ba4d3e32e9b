"""How every command answers: exit codes, and its data as a table (text), JSON, YAML or JSONL.

`-o/--output` picks the form (`--json` is `-o json`); a table is the command's own text, run
through `terminal.sanitize` by the caller. Errors go to stderr as text, or to stdout as a JSON
object when the caller asked for a machine form, with the exit code in both.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import yaml
from pydantic import BaseModel

from opsconductor.starter.terminal import sanitize

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
OUTPUT_FORMATS = ("table", "json", "yaml", "jsonl")


def output_format(args: argparse.Namespace) -> str:
    """The form asked for: `-o`, else `--json`, else the table."""
    chosen = getattr(args, "output", None)
    if chosen:
        return str(chosen)
    return "json" if getattr(args, "json", False) else "table"


def machine_output(args: argparse.Namespace) -> bool:
    return output_format(args) != "table"


def plain(data: Any) -> Any:
    """`data` as JSON-ready values (pydantic models dumped, lists of them too)."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [plain(item) for item in data]
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    return json.loads(json.dumps(data, default=str))


def render(data: Any, form: str) -> str:
    """`data` in a machine form: `json` (indented), `yaml`, or `jsonl` (one line per item)."""
    value = plain(data)
    if form == "json":
        return json.dumps(value, indent=2)
    if form == "yaml":
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=False).rstrip("\n")
    if form == "jsonl":
        items = value if isinstance(value, list) else [value]
        return "\n".join(json.dumps(item, separators=(",", ":")) for item in items)
    raise ValueError(f"unknown output format {form!r} (one of {', '.join(OUTPUT_FORMATS)})")


def _out(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    form = output_format(args)
    if form == "table":
        print(text() if callable(text) else text)
    else:
        print(render(data, form))


def _err(args: argparse.Namespace, message: str, code: int) -> int:
    if machine_output(args):
        print(json.dumps({"error": message, "exit_code": code}))
    else:
        print(f"error: {sanitize(message)}", file=sys.stderr)
    return code


def _iso_time(text: str) -> Any:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
