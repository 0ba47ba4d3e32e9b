"""The shapes upstream's planners and services write for a step, read as ours.

Pure functions shared by the request model and the validator, so both see the same plan.

* PlanV1 (`pipeline/schemas/plan_v1.py`): `id`, `tool`, `inputs`, prose `failure_handling`,
  `execution_location` (default "automation-service": WHERE a step runs, never a host),
  `requires_credentials`, `tool_metadata`.
* Execution requests of its Automation Service (`step_number`, `name`, `parameters`, no
  `id`): the id becomes `step_<NNN>` from `step_number` (else the 1-based position),
  `parameters` are the inputs, `name` the description, `step_number` the execution order.
* Its Stage E test plans (`type`, `target_hostname`, `target_asset_id`, `input_data`): `type`
  is the tool, `input_data` the inputs, the hostname (else the asset id) the target.
* Step generator output: `depends_on` entries such as `step_*_systemctl_*` are wildcards
  (fnmatch) over the plan's step ids.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from opsconductor.schema.templates import PLACEHOLDER

# Where a step may run: upstream's services (its Stage C may copy a catalog tool's location
# onto the step; upstream routes by the tool's name all the same, and so do we, see
# schema/catalog), or our worker itself.
EXECUTION_LOCATIONS = frozenset({"automation-service", "network-service", "asset-service",
                                 "communication-service", "worker", "local"})
TARGET_KEYS = ("target", "target_host")
WILDCARD_CHARS = frozenset("*?[")


def _conflict(d: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if k in d]


def normalize_step(raw: dict[str, Any], index: int) -> tuple[dict[str, Any], list[tuple[str,
                                                                                      str]]]:
    """The step in our shape, and (field, message) for shapes that contradict each other."""
    d = dict(raw)
    problems: list[tuple[str, str]] = []
    if "type" in d:
        if "tool" in d:
            problems.append(("type", "give `tool` or `type`, not both"))
        else:
            d["tool"] = d.pop("type")
    given = _conflict(d, ("inputs", "parameters", "input_data"))
    if len(given) > 1:
        problems.append((given[1], f"give one of `inputs`, `parameters`, `input_data` (found "
                                   f"{', '.join(given)})"))
    elif given and given[0] != "inputs":
        d["inputs"] = d.pop(given[0])
    if "name" in d and not d.get("description"):
        d["description"] = d.pop("name")
    number = d.get("step_number")
    if "id" not in d:
        n = number if isinstance(number, int) and not isinstance(number, bool) else index + 1
        d["id"] = f"step_{n:03d}"
    if "execution_order" not in d and isinstance(number, int) and not isinstance(number, bool):
        d["execution_order"] = number
    host, asset_id = d.pop("target_hostname", None), d.pop("target_asset_id", None)
    if host is not None or asset_id is not None:
        inputs = dict(d.get("inputs") or {}) if isinstance(d.get("inputs") or {}, dict) else {}
        if any(inputs.get(k) for k in TARGET_KEYS):
            problems.append(("target_hostname", "the target is given twice (step and inputs)"))
        else:
            inputs["target"] = str(host if host is not None else asset_id)
            if host is not None and asset_id is not None:
                inputs["asset_id"] = asset_id
            d["inputs"] = inputs
    return d, problems


def expand_dependencies(depends_on: list[Any], ids: list[str],
                        own: Any = None) -> tuple[list[str], list[tuple[int, str]], bool]:
    """Wildcards expanded over `ids` (in plan order, without the step itself). Returns the
    expanded list, (index, message) for wildcards that match nothing, and whether any entry
    was a wildcard."""
    out: list[str] = []
    problems: list[tuple[int, str]] = []
    had = False
    for j, dep in enumerate(depends_on):
        if not isinstance(dep, str) or not (WILDCARD_CHARS & set(dep)):
            if isinstance(dep, str) and dep not in out:
                out.append(dep)
            continue
        had = True
        matched = [i for i in ids if fnmatch.fnmatchcase(i, dep) and i != own]
        if not matched:
            problems.append((j, f"wildcard {dep!r} matches no step id"))
        out += [m for m in matched if m not in out]
    return out, problems, had


# Tools whose `target` input is not where the step runs (network_tools: the host to probe).
NOT_A_TARGET: dict[str, tuple[str, ...]] = {"network_tools": ("target",)}


def step_target(inputs: dict[str, Any], tool: str | None = None) -> str | None:
    """The asset a step names in its inputs, or None (this machine, or a template only run
    time resolves)."""
    from opsconductor.schema.tools import target_keys

    for key in target_keys(tool, inputs):
        if key in NOT_A_TARGET.get(tool or "", ()):
            continue
        value = inputs.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            text = str(value)
            return None if PLACEHOLDER.search(text) else text
    hosts = inputs.get("target_hosts")
    if isinstance(hosts, list) and len(hosts) == 1 and isinstance(hosts[0], str):
        return None if PLACEHOLDER.search(hosts[0]) else hosts[0]
    return None
