"""Template variables in plan steps: `{{...}}` placeholders read from earlier steps' results.

Pure and deterministic (the workflow may call it): no I/O, no clock.

Forms a placeholder may take:

* `{{steps.<step_id>.<path>}}` — a field of an earlier step's result (`output.count`,
  `stdout`, `exit_code`, `output.assets[0].hostname`).
* upstream's bare forms, which refer to the NEAREST EARLIER asset-query step:
  `{{assets}}`, `{{asset_count}}`, `{{hostnames}}`, `{{ip_addresses}}` read its list-level
  result; `{{item.<field>}}`, `{{item}}` and any other bare name (`{{hostname}}`,
  `{{ip_address}}`, `{{id}}`, `{{os_type}}`) read one returned asset, so the step runs once
  per asset (fan-out).

A placeholder naming an unknown step, the step itself or a later step, or a bare form with no
earlier asset-query step, is a validation problem with its field path. How a value is
substituted depends on where it lands, so that data never becomes code:

* command text: quoted for that command's shell (POSIX sh or PowerShell);
* SQL, URLs, headers, JSON bodies (the `sql` and `http` kinds): bound parameters,
  per-component percent-encoding, CR/LF refused, structural JSON values
  (`schema/template_contexts.py`, which also names what is refused at submission);
* any other field that is exactly one placeholder takes the value as is (a list stays a list).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from opsconductor.schema.template_contexts import (
    PATH_KEYS,
    PLACEHOLDER,
    ContextError,
    header_value,
    input_problems,
    json_template,
    render_path,
    render_sql,
    render_url,
)

ASSET_QUERY_TOOLS = frozenset({"asset-query"})
LIST_VARIABLES = frozenset({"assets", "asset_count", "hostnames", "ip_addresses", "count"})
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_NAME = re.compile(r"^[A-Za-z_][\w\-]*(?:\.[\w\-]+|\[\d+\])*$")


class Placeholder(BaseModel):
    """One `{{...}}` occurrence, resolved to the earlier step it reads."""

    field: str  # where in the step: "inputs.command", "inputs.target_hosts[0]", "command"
    text: str  # the whole "{{ ... }}"
    expr: str
    source: str  # the earlier step id it reads
    path: list[str | int] = Field(default_factory=list)  # inside the result, or the item
    per_item: bool = False  # reads one returned asset: the step fans out


class TemplateProblem(BaseModel):
    path: str
    message: str


class Variant(BaseModel):
    """One concrete run of a fanned-out (or merely templated) step."""

    id: str  # "<step>#<n>" for fan-out, the step id otherwise
    index: int
    item: dict[str, Any] | None = None
    inputs: dict[str, Any]
    command: str | None = None
    target: str | None = None


def _walk(value: Any, path: str) -> list[tuple[str, str]]:
    """(field path, string) for every string inside `value`."""
    if isinstance(value, str):
        return [(path, value)]
    out: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for key, sub in value.items():
            out += _walk(sub, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, sub in enumerate(value):
            out += _walk(sub, f"{path}[{i}]")
    return out


def has_placeholders(value: Any) -> bool:
    return any(PLACEHOLDER.search(text) for _, text in _walk(value, ""))


def parse_path(text: str) -> list[str | int]:
    return [int(idx) if idx else name for name, idx in _PATH_PART.findall(text)]


def find_placeholders(fields: Mapping[str, Any], *, step_id: str,
                      earlier: Sequence[tuple[str, str]], known: set[str],
                      base: str = "") -> tuple[list[Placeholder], list[TemplateProblem]]:
    """Resolve every placeholder in `fields` (e.g. {"inputs": ..., "command": ...}).

    `earlier` lists (step id, tool) of the steps before this one, in plan order; `known` is
    every step id of the plan, so a later step is told apart from an unknown one.
    """
    found: list[Placeholder] = []
    problems: list[TemplateProblem] = []
    earlier_ids = [sid for sid, _ in earlier]
    query = next((sid for sid, tool in reversed(earlier) if tool in ASSET_QUERY_TOOLS), None)
    for name, value in fields.items():
        for field, text in _walk(value, name):
            where = f"{base}.{field}" if base else field
            for m in PLACEHOLDER.finditer(text):
                expr = m.group(1)
                if not expr or not _NAME.match(expr):
                    problems.append(TemplateProblem(path=where, message=(
                        f"malformed template variable {m.group(0)!r}")))
                    continue
                parts = parse_path(expr)
                if parts[0] == "steps":
                    sid = parts[1] if len(parts) > 1 and isinstance(parts[1], str) else ""
                    if sid == step_id:
                        msg = f"{m.group(0)} reads this step's own result"
                    elif sid in earlier_ids:
                        found.append(Placeholder(field=field, text=m.group(0), expr=expr,
                                                 source=sid, path=parts[2:]))
                        continue
                    elif sid in known:
                        msg = f"{m.group(0)} reads step {sid!r}, which runs later"
                    else:
                        msg = f"{m.group(0)} reads unknown step {sid!r}"
                    problems.append(TemplateProblem(path=where, message=msg))
                    continue
                if query is None:
                    problems.append(TemplateProblem(path=where, message=(
                        f"{m.group(0)} needs an earlier asset-query step to read from; there "
                        "is none before this step")))
                    continue
                if parts[0] == "item":
                    found.append(Placeholder(field=field, text=m.group(0), expr=expr,
                                             source=query, path=parts[1:], per_item=True))
                elif len(parts) == 1 and parts[0] in LIST_VARIABLES:
                    found.append(Placeholder(field=field, text=m.group(0), expr=expr,
                                             source=query, path=["output", parts[0]]))
                else:
                    found.append(Placeholder(field=field, text=m.group(0), expr=expr,
                                             source=query, path=parts, per_item=True))
    return found, problems


def context_problems(kind: str, inputs: Mapping[str, Any], placeholders: Sequence[Placeholder],
                     base: str) -> list[TemplateProblem]:
    """Placeholders that no substitution can make safe where they stand (SQL identifiers,
    URL schemes and hosts from data, header names, non-JSON text bodies), and header text
    that would split a request. `inputs` is the executor's input shape; each problem is
    reported at the planner's field that holds the placeholder (`base` + its field)."""
    where = {p.text: p.field for p in placeholders}
    out = []
    for p in input_problems(kind, inputs):
        field = where.get(p.text) if p.text else None
        path = f"{base}.{field}" if field else f"{base}.inputs.{p.key}"
        out.append(TemplateProblem(path=path, message=f"{p.text} {p.message}" if p.text
                                   and not p.message.startswith(p.text) else p.message))
    return out


def sources(placeholders: Sequence[Placeholder]) -> list[str]:
    """The earlier steps a templated step reads (it must run after them)."""
    return list(dict.fromkeys(p.source for p in placeholders))


def fans_out(placeholders: Sequence[Placeholder]) -> str | None:
    """The asset-query step whose returned assets this step iterates over, if any."""
    return next((p.source for p in placeholders if p.per_item), None)


class TemplateError(LookupError):
    """A placeholder whose value is not in the earlier result, or a value its position cannot
    take safely (reported on the step)."""


_MISSING = object()


def _dig(doc: Any, path: Sequence[str | int]) -> Any:
    cur = doc
    for part in path:
        if isinstance(part, int) and isinstance(cur, list) and -len(cur) <= part < len(cur):
            cur = cur[part]
        elif isinstance(part, str) and isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def value_of(ph: Placeholder, results: Mapping[str, Any], item: Mapping[str, Any] | None) -> Any:
    """The value a placeholder stands for; TemplateError when it is absent."""
    if ph.per_item:
        if item is None:
            raise TemplateError(f"{ph.text} reads one asset, but no asset is being iterated")
        value = _dig(item, ph.path)
    else:
        if ph.source not in results:
            raise TemplateError(f"{ph.text}: step {ph.source!r} has no result")
        value = _dig(results[ph.source], ph.path)
    if value is _MISSING:
        raise TemplateError(f"{ph.text}: no such field in the result of step {ph.source!r}")
    return value


def shell_quote(value: Any) -> str:
    return shlex.quote(_text(value))


def powershell_quote(value: Any) -> str:
    return "'" + _text(value).replace("'", "''") + "'"


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    return "" if value is None else str(value)


def render_value(value: Any, field: str | None, placeholders: Sequence[Placeholder],
                 results: Mapping[str, Any], item: Mapping[str, Any] | None,
                 quote: Callable[[Any], str] | None = None) -> Any:
    """`value` with its placeholders substituted; `quote` applies inside command text.
    `field` None matches placeholders found anywhere (a command built from the inputs)."""
    if isinstance(value, str):
        here = {p.text: p for p in placeholders if field is None or p.field == field}
        if not here:
            return value
        whole = PLACEHOLDER.fullmatch(value.strip())
        if whole and quote is None:
            return value_of(here[whole.group(0)] if whole.group(0) in here else
                            next(iter(here.values())), results, item)

        def sub(m: re.Match[str]) -> str:
            ph = here.get(m.group(0))
            if ph is None:
                return m.group(0)
            got = value_of(ph, results, item)
            return quote(got) if quote is not None else _text(got)

        return PLACEHOLDER.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: render_value(v, None if field is None else f"{field}.{k}", placeholders,
                                results, item, quote) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, None if field is None else f"{field}[{i}]", placeholders,
                             results, item, quote) for i, v in enumerate(value)]
    return value


COMMAND_KEYS = frozenset({"command", "script"})
TARGET_KEYS = ("target", "target_host", "target_hostname")


def _lookup_text(placeholders: Sequence[Placeholder], results: Mapping[str, Any],
                 item: Mapping[str, Any] | None) -> Callable[[str], Any]:
    """The value of a placeholder by its text (as the contexts ask for it)."""
    by_text = {p.text: p for p in placeholders}

    def value(text: str) -> Any:
        ph = by_text.get(text)
        if ph is None:
            raise TemplateError(f"{text}: not a placeholder of this step")
        return value_of(ph, results, item)

    return value


def _render_in_context(kind: str, inputs: Mapping[str, Any], out: dict[str, Any],
                       placeholders: Sequence[Placeholder], results: Mapping[str, Any],
                       item: Mapping[str, Any] | None) -> set[str]:
    """Render the inputs whose syntax decides the substitution (SQL text, URL, headers, text
    JSON bodies) into `out`; the keys it handled."""
    value = _lookup_text(placeholders, results, item)
    done: set[str] = set()
    try:
        if kind == "sql" and isinstance(inputs.get("query"), str):
            params = render_value(list(inputs.get("params") or []), None, placeholders,
                                  results, item)
            out["query"], out["params"] = render_sql(inputs["query"], params, value)
            done |= {"query", "params"}
        if kind == "http":
            if isinstance(inputs.get("url"), str):
                out["url"] = render_url(inputs["url"], value)
                done.add("url")
            if isinstance(inputs.get("headers"), Mapping):
                out["headers"] = {
                    name: header_value(str(name), render_value(v, None, placeholders, results,
                                                               item, _text))
                    if isinstance(v, str) else v for name, v in inputs["headers"].items()}
                done.add("headers")
            body = inputs.get("body")
            if isinstance(body, str) and PLACEHOLDER.search(body):
                out["body"] = render_value(json_template(body), None, placeholders, results,
                                           item)
                done.add("body")
        if kind == "file_transfer":
            for key in PATH_KEYS:
                if isinstance(inputs.get(key), str):
                    out[key] = render_path(key, inputs[key], value)
                    done.add(key)
    except ContextError as err:
        raise TemplateError(str(err)) from err
    return done


def render(inputs: Mapping[str, Any], command: str | None, target: str | None,
           placeholders: Sequence[Placeholder], results: Mapping[str, Any],
           item: Mapping[str, Any] | None = None,
           quote: Callable[[Any], str] = shell_quote,
           kind: str | None = None) -> tuple[dict[str, Any], str | None, str | None]:
    """Render a step's inputs, command and target for one run (item: the asset iterated).
    `kind` (the step kind: "sql", "http", ...) selects the context-aware substitutions."""
    out: dict[str, Any] = {}
    done = (_render_in_context(kind, inputs, out, placeholders, results, item)
            if kind is not None else set())
    for key, value in inputs.items():
        if key in done:
            continue
        # Matched by text, not field: an executor's input shape may rename the planner's keys.
        out[key] = render_value(value, None, placeholders, results, item,
                                quote if key in COMMAND_KEYS else None)
    cmd = (render_value(command, None, placeholders, results, item, quote)
           if command is not None else None)
    tgt = (render_value(target, None, placeholders, results, item)
           if target is not None else None)
    hosts = out.pop("target_hosts", None)
    if isinstance(hosts, list) and hosts:
        out.setdefault("target_host", hosts[0])
    if tgt is None:
        tgt = next((str(out[k]) for k in TARGET_KEYS if out.get(k)), None)
    return out, cmd, (str(tgt) if tgt is not None else None)


def item_target(item: Mapping[str, Any]) -> str | None:
    """Where one returned asset runs: its hostname, else its address, else its id."""
    for key in ("hostname", "ip_address", "address", "name", "id"):
        if item.get(key) not in (None, ""):
            return str(item[key])
    return None


def items_of(source: str, results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The assets an asset-query step returned (its `output.assets`)."""
    doc = results.get(source)
    assets = _dig(doc, ["output", "assets"]) if doc is not None else _MISSING
    if assets is _MISSING or not isinstance(assets, list):
        raise TemplateError(f"step {source!r} returned no asset list (output.assets)")
    return [dict(a) for a in assets if isinstance(a, Mapping)]


def expand(step_id: str, inputs: Mapping[str, Any], command: str | None, target: str | None,
           placeholders: Sequence[Placeholder], results: Mapping[str, Any],
           quote: Callable[[Any], str] = shell_quote,
           kind: str | None = None) -> list[Variant]:
    """One variant per returned asset for a fan-out step (ids `<step>#<n>`, n from 1), or
    the single rendered step otherwise. An empty asset list gives no variants."""
    source = fans_out(placeholders)
    if source is None:
        r_inputs, r_cmd, r_target = render(inputs, command, target, placeholders, results,
                                           None, quote, kind)
        return [Variant(id=step_id, index=0, inputs=r_inputs, command=r_cmd, target=r_target)]
    variants = []
    for n, item in enumerate(items_of(source, results), start=1):
        r_inputs, r_cmd, r_target = render(inputs, command, target, placeholders, results,
                                           item, quote, kind)
        variants.append(Variant(id=f"{step_id}#{n}", index=n, item=dict(item), inputs=r_inputs,
                                command=r_cmd, target=r_target or item_target(item)))
    return variants
