"""The corpus's read steps, sent by a principal without `shell` (`bot-ci` in prod): each one
the probe catalog knows dry-runs clean, and the dry run shows the probe and the argv (or
cmdlet line) it will run. The read steps that stay free text are named and refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from opsconductor.activities.authorization import operation_of
from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import validate_request
from opsconductor.starter.dry_run import dry_run, render_text
from tests.planner.helpers import INDEX, load

# Reads that stay free text (they need `shell`): a listing of the working directory (a probe
# names its path).
FREE_TEXT_READS = {("stage_e_test_plan.json", "ssh_command_read:ls -la")}


def _steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["plan"]["plan"]["steps"] if "plan" in doc["plan"] else doc["plan"]["steps"]


def _read_only(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The plan as `bot-ci` in prod, with only its non-command steps and the command steps that
    are probes; returns it, the probes' step ids and the free-text reads left out."""
    spec = build_spec(validate_request(doc), execution_id="e", workflow_id="w",
                      idempotency_key="k")
    keep, kept_ids, probes, free = set(), set(), [], []
    for i, s in enumerate(spec.steps):  # in the plan's own order
        if s.kind.value != "command" or \
                operation_of(s.tool, s.command, inputs=s.inputs).probe is not None:
            keep.add(i)
            kept_ids.add(s.id)
            if s.kind.value == "command":
                probes.append(s.id)
        elif s.action_class.value == "read":
            free.append(s.tool if s.tool != "ssh_command_read" else f"{s.tool}:{s.command}")
    out = copy.deepcopy(doc)
    out["actor"], out["environment"] = "bot-ci", "prod"
    steps = _steps(out)
    steps[:] = [s for i, s in enumerate(steps) if i in keep]
    meta = (out["plan"].get("execution_metadata") or {})
    if meta.get("checkpoint_steps"):
        meta["checkpoint_steps"] = [c for c in meta["checkpoint_steps"] if c in kept_ids]
    for s in steps:
        if "depends_on" in s:
            s["depends_on"] = [d for d in s["depends_on"] if d in kept_ids or "*" in d]
    return out, probes, free


VALID = [e for e in INDEX if e["valid"]]


async def test_corpus_reads_dry_run_clean_as_probes_without_shell(inventory: Path) -> None:
    mapped, total, left = 0, 0, []
    for entry in VALID:
        name = str(entry["file"])
        doc, probes, free = _read_only(load(name))
        left += [(name, f) for f in free]
        total += len(probes)
        if not probes:
            continue
        report = await dry_run(doc)
        text = render_text(report)
        assert report.would_run, text
        for s in report.steps:  # ids without explicit ones are renumbered: judge by kind
            if s.executor == "command":
                assert s.allowed and s.probe and s.argv, text
                assert f"probe:     {s.probe}: {s.probe_line}" in text
                assert s.probe_line and (s.argv[0] in s.probe_line or
                                         s.argv[0].split()[0] in s.probe_line)
                mapped += 1
    print(f"\n[corpus] {mapped} read steps dry-run clean for bot-ci in prod as probes; "
          f"{len(left)} reads stay free text (need shell): {left}")
    assert mapped == total >= 22
    assert set(left) == FREE_TEXT_READS


async def test_a_free_text_read_is_refused_without_shell_and_warned_with_it(
        inventory: Path) -> None:
    doc = load("stage_e_test_plan.json")
    doc["actor"], doc["environment"] = "bot-ci", "prod"
    report = await dry_run(doc)
    assert not report.would_run
    ls, df = report.steps
    assert not ls.allowed and "shell" in ls.rbac_reason and ls.probe is None
    assert ls.warning and "needs shell" in ls.warning
    assert df.allowed and df.probe == "disk_usage"
