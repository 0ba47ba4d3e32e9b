"""The command line's shared habits: `-o/--output` and `--json` anywhere, `--version`, and
plans read from a file, stdin (`-`) or YAML.

The parser stays argparse: the CLI is ~40 commands built on it, its tests drive `main(argv)`,
and what click would add (groups, completion) argparse has with a few lines here; moving
would rewrite every command for no behaviour an operator sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from opsconductor.starter.cli_output import OUTPUT_FORMATS

DISTRIBUTION = "opsconductor-execution"
YAML_SUFFIXES = (".yaml", ".yml")


class PlanInputError(ValueError):
    """A plan that cannot be read; the message names the source and what is wrong."""


def version_text() -> str:
    try:
        return f"opsconductor {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return "opsconductor (not installed)"


def _output_flags(parser: argparse.ArgumentParser, *, root: bool) -> None:
    """`-o FORMAT` and `--json` on `parser`; their defaults are SUPPRESS so that a value
    given before the subcommand is not reset by the subcommand's own default."""
    known = {opt for action in parser._actions for opt in action.option_strings}
    if "--json" in known:
        for action in parser._actions:
            if "--json" in action.option_strings:
                action.default = argparse.SUPPRESS
    else:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="machine-readable output (same as -o json)")
    if "--output" not in known and "-o" not in known:
        parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=argparse.SUPPRESS,
                            help="output format: table (text, the default), json, yaml, or "
                                 "jsonl (one JSON object a line). Example: -o yaml"
                            if root else "output format (see opsconductor --help)")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subparsers(child)]
    return found


def add_global_flags(root: argparse.ArgumentParser) -> None:
    """`--version`, and `-o/--output` and `--json` on the root and on every subcommand."""
    root.add_argument("--version", action="version", version=version_text())
    _output_flags(root, root=True)
    for child in _subparsers(root):
        _output_flags(child, root=False)


def normalize_output(args: argparse.Namespace) -> None:
    """One answer to "which form?": `args.output` set, and `args.json` true for every machine
    form (the commands that stream, `events` and `watch`, print JSON lines then)."""
    chosen = getattr(args, "output", None)
    if chosen is None:
        chosen = "json" if getattr(args, "json", False) else "table"
    args.output = chosen
    args.json = chosen != "table"


def read_plan(source: str, max_chars: int) -> Any:
    """The document at `source` (a path, or `-` for stdin): JSON, or YAML when the file ends in
    .yaml/.yml or stdin's text is not JSON. Bounded before it is parsed."""
    if source == "-":
        name = "stdin"
        data = sys.stdin.buffer.read(4 * max_chars + 1)
    else:
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
            if size > 4 * max_chars:  # refused unread: even all-ASCII it is too big
                raise PlanInputError(f"{path} holds {size:,} bytes; a request may hold at "
                                     f"most {max_chars:,} characters")
            data = path.read_bytes()
        except FileNotFoundError:
            raise PlanInputError(f"no such file: {path}") from None
        except (IsADirectoryError, PermissionError) as err:
            raise PlanInputError(f"cannot read {path}: {err.strerror}") from None
    if len(data) > 4 * max_chars:
        raise PlanInputError(f"{name} holds more than {4 * max_chars:,} bytes; a request may "
                             f"hold at most {max_chars:,} characters")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PlanInputError(f"{name} is not UTF-8 text (byte {err.start}: "
                             f"{err.reason})") from None
    as_yaml = name.endswith(YAML_SUFFIXES) or (source == "-" and not _looks_like_json(text))
    try:
        return _yaml(text, name) if as_yaml else json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanInputError(f"{name} is not valid JSON: {err}") from None
    except RecursionError:
        raise PlanInputError(f"{name} is nested too deeply to be a request") from None


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


class _PlanLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice (JSON's last-wins would hide it)."""


def _no_duplicates(loader: _PlanLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} written twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_PlanLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _yaml(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_PlanLoader)
    except yaml.YAMLError as err:
        raise PlanInputError(f"{name} is not valid YAML: {err}") from None


def fresh_key() -> str:
    """An idempotency key no earlier submission used (`run --new`)."""
    return f"cli-new-{uuid.uuid4().hex}"
