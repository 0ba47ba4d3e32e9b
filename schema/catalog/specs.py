"""Catalog tools as tool specs: each tool's inputs as a typed model, its command built by
upstream's convention as an argument list, its action class from the data file.

Upstream's convention (its Automation Service's unified executor): `inputs.command` runs
verbatim; otherwise the tool's name, then every other input in the order written, as
`--key-name value` (`-k value` for a one-letter key; a boolean true as the bare flag, false
left out) or, for Windows tools, as cmdlet parameters `-Keyname value`; the connection inputs
(`host`, `target_host`, `computer_name`, `server`, `use_asset_credentials`, `asset_id`,
`connection_type`, `timeout`, `username`, `password`, `domain`) are never passed. We keep each
value one argument (upstream splices them into one string for a shell): each word quoted for
sh, single-quoted literals for PowerShell; a `{{placeholder}}` stays bare for the renderer,
which quotes what it puts there.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from opsconductor.schema.catalog import (
    CONNECTION_INPUTS,
    ROUTES,
    SERVICE_SPELLING,
    TARGET_ALIASES,
    CatalogTool,
    by_name,
)
from opsconductor.schema.enums import ActionClass, StepKind
from opsconductor.schema.templates import PLACEHOLDER

NEEDS_HOST = ("a Windows tool runs on its host through the Automation Service: name the host "
              "(`host`, `target_host`, `computer_name` or `server`)")
_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                          "array": list[Any], "object": dict[str, Any]}


class CatalogInputs(BaseModel):
    """A catalog tool's inputs: its declared names only (others refused), plus upstream's
    connection inputs. Keeps the order the planner wrote them in (the command follows it)."""

    model_config = ConfigDict(extra="forbid")
    _order: list[str] = PrivateAttr(default_factory=list)
    # A Windows tool runs on a host through the Automation Service: it must name one.
    needs_host: ClassVar[bool] = False

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        model = handler(data)
        if isinstance(data, dict):
            model._order = [k for k in data if k in type(model).model_fields]
        return model

    @model_validator(mode="after")
    def _host_given(self) -> CatalogInputs:
        if self.needs_host and self.named_host() is None:
            raise ValueError(NEEDS_HOST)
        return self

    def written(self) -> list[tuple[str, Any]]:
        """(name, value) of every input given, in the order written."""
        order = self._order or list(self.model_fields_set)
        return [(k, getattr(self, k)) for k in order if getattr(self, k) is not None]

    def named_host(self) -> str | None:
        for key in TARGET_ALIASES:
            value = getattr(self, key, None)
            if isinstance(value, str) and value:
                return value
        return None


def _connection_fields() -> dict[str, Any]:
    from opsconductor.schema.own_tools import SecretInput

    fields: dict[str, Any] = {k: (str | None, None) for k in TARGET_ALIASES}
    fields.update({
        "use_asset_credentials": (bool | None, None),
        "asset_id": (int | str | None, None),
        "connection_type": (str | None, None),
        "timeout": (float | None, Field(default=None, gt=0)),
        "username": (str | None, None),
        "password": (SecretInput | None, None),
        "domain": (str | None, None),
        "command": (str | None, Field(default=None, min_length=1)),
    })
    return fields


def inputs_model(name: str, inputs: dict[str, str], *,
                 own_credentials: bool = True) -> type[CatalogInputs]:
    """The model of one tool: its catalog inputs typed, every one optional. Without
    `own_credentials` (a tool we run over SSH or locally, whose credentials are its asset's)
    a `password` or `domain` the catalog does not declare is refused, not ignored."""
    fields = _connection_fields()
    if not own_credentials:
        for key in ("password", "domain"):
            if key not in inputs:
                del fields[key]
    for key, kind in inputs.items():
        if key in fields or not key.isidentifier():
            continue
        fields[key] = (_TYPES[kind] | None, None)
    safe = "".join(c if c.isalnum() else "_" for c in name)
    return create_model(f"Catalog_{safe}_Inputs", __base__=CatalogInputs, **fields)


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flags(written: list[tuple[str, Any]], flag: Callable[[str], str]
           ) -> list[tuple[str, str | None]]:
    """(flag, value) per input passed (value None: a bare switch), connection inputs left
    out, in the order written."""
    out: list[tuple[str, str | None]] = []
    for key, value in written:
        if key in CONNECTION_INPUTS or key == "command" or key.startswith("_"):
            continue
        if isinstance(value, bool):
            if value:
                out.append((flag(key), None))
        else:
            out.append((flag(key), _value(value)))
    return out


def posix_flag(key: str) -> str:
    """`--key-name`, or `-k` for a one-letter key."""
    return f"-{key}" if len(key) == 1 else "--" + key.replace("_", "-")


def cmdlet_flag(key: str) -> str:
    """Upstream's parameter name: the key without underscores, title-cased
    (`service_name` -> `-Servicename`; PowerShell matches it case-insensitively)."""
    return "-" + key.replace("_", "").title()


def _argv(name: str, pairs: list[tuple[str, str | None]]) -> list[str]:
    return [name, *(x for f, v in pairs for x in ((f,) if v is None else (f, v)))]


def posix_argv(name: str, written: list[tuple[str, Any]]) -> list[str]:
    """`name --key-name value -k value --flag`."""
    return _argv(name, _flags(written, posix_flag))


def cmdlet_argv(name: str, written: list[tuple[str, Any]]) -> list[str]:
    """`Name -Keyname value -Switch`."""
    return _argv(name, _flags(written, cmdlet_flag))


def sh_word(arg: str) -> str:
    """One shell word: literal text quoted, a `{{placeholder}}` left bare for the renderer,
    which quotes the value it puts there (schema.templates): still one word."""
    out, pos = [], 0
    for m in PLACEHOLDER.finditer(arg):
        if arg[pos:m.start()]:
            out.append(shlex.quote(arg[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    if arg[pos:] or not out:
        out.append(shlex.quote(arg[pos:]))
    return "".join(out)


def sh_line(argv: list[str]) -> str:
    return " ".join(sh_word(a) for a in argv)


def powershell_line(name: str, pairs: list[tuple[str, str | None]]) -> str:
    """One PowerShell statement: the name and parameter names bare (ours, never a value),
    every value a single-quoted literal (nothing in it is interpreted), or a whole-value
    `{{placeholder}}` the renderer fills with such a literal."""
    out = [name]
    for flag, value in pairs:
        out.append(flag)
        if value is None:
            continue
        if PLACEHOLDER.fullmatch(value):
            out.append(value)
        elif PLACEHOLDER.search(value):
            raise ValueError(f"{flag}: a template in a Windows tool's input must be the whole "
                             f"value, not part of {value!r}")
        else:
            out.append("'" + value.replace("'", "''") + "'")
    return " ".join(out)


def _primary(rows: tuple[CatalogTool, ...]) -> CatalogTool:
    """A name with a linux and a windows row (ping, netstat, ...) builds as the linux one;
    the target asset's own connector decides where it runs."""
    return next((r for r in rows if not r.windows), rows[0])


def catalog_spec(name: str, rows: tuple[CatalogTool, ...]) -> Any:
    """The ToolSpec of one catalog tool name."""
    from opsconductor.schema.own_tools import ToolSpec

    row = _primary(rows)
    merged: dict[str, str] = {}
    for r in rows:
        merged.update(r.inputs)
    windows = all(r.windows for r in rows)
    route = ROUTES[row.location]
    model = inputs_model(name, merged, own_credentials=windows or route.sent)
    model.needs_host = windows and not route.sent
    action = ActionClass(row.action)

    def argv(inputs: BaseModel) -> list[str]:
        assert isinstance(inputs, CatalogInputs)
        build = cmdlet_argv if windows else posix_argv
        return build(name, inputs.written())

    def command(inputs: BaseModel) -> str:
        assert isinstance(inputs, CatalogInputs)
        given = getattr(inputs, "command", None)
        if given:
            return str(given)
        if windows:
            return powershell_line(name, _flags(inputs.written(), cmdlet_flag))
        return sh_line(argv(inputs))

    def action_class(inputs: BaseModel) -> ActionClass:
        assert isinstance(inputs, CatalogInputs)
        written = getattr(inputs, "command", None)
        return ActionClass.MODIFY if written and action is ActionClass.READ else action

    targets = TARGET_ALIASES if row.target else ()

    def time_limit(inputs: BaseModel) -> float | None:
        """Upstream's `timeout` is the command's limit; a catalog `timeout_seconds` (ping,
        curl) is an argument of the program, not ours."""
        return getattr(inputs, "timeout", None)
    if route.sent:
        return ToolSpec(name, StepKind.SERVICE, model, action_class,
                        connector=route.location, service=route.location,
                        service_tool=SERVICE_SPELLING.get(name, name),
                        target_keys=targets, description=f"sent to the {route.location}",
                        catalog=row.file, time_limit=time_limit)
    return ToolSpec(name, StepKind.COMMAND, model, action_class, command,
                    connector="automation-service" if windows else None,
                    dialect="powershell" if windows else "sh", build_argv=argv,
                    target_keys=targets, description=f"catalog tool ({row.group})",
                    catalog=row.file, time_limit=time_limit)


def catalog_specs() -> dict[str, Any]:
    """Every catalog name (and the communication service's spellings) to its spec."""
    return {name: catalog_spec(name, rows) for name, rows in by_name().items()}
