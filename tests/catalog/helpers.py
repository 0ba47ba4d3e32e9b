"""Plans built from upstream's catalog as its Stage C builds them, and the inventory they run
against. The catalog's facts used here are re-stated in `catalog_steps.json` (this
directory), independently of the package's own data file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
STEPS = json.loads((HERE / "catalog_steps.json").read_text())["plans"]
ENVELOPE = {"tenant": "upstream", "actor": "stage-d", "environment": "dev"}
# Every host the catalog's examples name as a target.
HOSTS = ("192.168.1.100", "app-server-01", "web-server-01", "monitoring-server",
         "bastion-host")


def stage_c_step(tool: str, inputs: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """A step as upstream's Stage C writes it (LLM path, then its catalog enrichment)."""
    return {"id": f"step_{index:08x}", "description": f"Execute {tool}", "tool": tool,
            "inputs": dict(inputs), "preconditions": [],
            "success_criteria": ["operation_completed"],
            "failure_handling": "Log error and abort", "estimated_duration": 10,
            "depends_on": [], "execution_order": 1, "requires_credentials": False,
            "execution_location": "automation-service", "tool_metadata": {}}


def plan_for(entry: dict[str, Any]) -> dict[str, Any]:
    return {**ENVELOPE, "plan": {"plan": {"steps": [stage_c_step(entry["tool"],
                                                                 entry["inputs"])]},
                                 "execution_metadata": {}}}


def inventory_text(address: str = "127.0.0.1", port: int = 22) -> str:
    rows = [f"  - {{id: {h}, hostname: '{h}', connector: ssh, address: {address}, "
            f"port: {port}, user: tester}}" for h in HOSTS]
    return "assets:\n" + "\n".join(rows) + "\n"


def tally(rows: list[tuple[str, str, str]]) -> str:
    """`(group, location, verdict)` rows as a table of counts by group and by location."""
    verdicts = ("clean", "refused-for-reason", "refused-wrongly")
    lines = []
    for label, index in (("category", 0), ("location", 1)):
        keys = sorted({r[index] for r in rows})
        for key in keys:
            c = Counter(r[2] for r in rows if r[index] == key)
            lines.append(f"  {label:8s} {key:22s} " + "  ".join(f"{v} {c[v]:3d}" for v in verdicts))
    c = Counter(r[2] for r in rows)
    lines.append(f"  total {len(rows)}: " + ", ".join(f"{v} {c[v]}" for v in verdicts))
    return "\n".join(lines)
