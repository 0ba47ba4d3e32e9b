"""The tool registry: what a plan step's `tool` means.

Each tool maps to a step kind (which executor runs it), an action class (which timeout policy
row applies) and an input model (what the planner must send). Plain command-line tools that
planners emit (`systemctl`, `df`, ...) map to the command kind with the command line built
from their inputs, so an executor only ever sees a finished command. Our own tools live in
`own_tools`, upstream's in `upstream_tools` and its catalog in `catalog`; this module joins
them (they import none of it).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from opsconductor.schema import upstream_tools as _upstream_tools
from opsconductor.schema.catalog.specs import catalog_specs
from opsconductor.schema.own_tools import (
    PLAIN_SECRET_MESSAGE,
    TOOLS,
    CommandInputs,
    ConnectionInputs,
    FileTransferInputs,
    HttpInputs,
    SecretInput,
    SecretRef,
    SqlInputs,
    ToolSpec,
    is_secret_ref,
    register,
)

__all__ = ["PLAIN_SECRET_MESSAGE", "TOOLS", "CommandInputs", "ConnectionInputs",
           "FileTransferInputs", "HttpInputs", "SecretInput", "SecretRef", "SqlInputs",
           "ToolSpec", "is_secret_ref", "known_tools", "lookup", "register", "target_keys"]


def _own(tool: str) -> ToolSpec | None:
    spec = TOOLS.get(tool)
    if spec is None and CMDLET.match(tool):
        return _upstream_tools.cmdlet_tool(tool)
    return spec


def _keys(model: type[BaseModel]) -> set[str]:
    return {k for name, f in model.model_fields.items() for k in (name, f.alias) if k}


def lookup(tool: str, inputs: Any = None) -> ToolSpec | None:
    """The tool's spec; a PowerShell cmdlet name (Verb-Noun) is a PowerShell tool. A name
    that is both one of ours and a catalog tool reads the step in the catalog's form when
    its inputs use a name only the catalog's form knows (`host`, `service_name`, ...), else
    in ours (a step mixing names of both is read as ours, the catalog's names refused): a
    rule on the input names, never on whether a form happens to validate."""
    own = _own(tool)
    cat = CATALOG.get(tool)
    if own is None or cat is None:
        return own or cat
    if isinstance(inputs, dict):
        theirs, ours = _keys(cat.inputs), _keys(own.inputs)
        if set(inputs) & (theirs - ours) and not set(inputs) & (ours - theirs):
            return cat
    return own


def target_keys(tool: str | None, inputs: Any) -> tuple[str, ...]:
    """The inputs that name the step's target for this tool in this form."""
    spec = lookup(tool, inputs) if tool else None
    return spec.target_keys if spec is not None else ("target", "target_host")


CMDLET = re.compile(r"^[A-Z][a-z]+-[A-Z][A-Za-z0-9]+$")

# Upstream's catalog (PowerShell, asset-query, api-request, psql, conditional-check, the rule
# planner's tools, ps/docker with their own inputs) registers itself here.
_upstream_tools.register_all(register)

# Every tool of upstream's catalog (schema/catalog): names we do not know as our own are
# catalog tools; names we know are read in the catalog's form when the step writes it.
CATALOG: dict[str, ToolSpec] = catalog_specs()


def known_tools() -> list[str]:
    return sorted({*TOOLS, *CATALOG})
