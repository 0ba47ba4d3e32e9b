"""What a step's `failure_handling` means, when the planner wrote it as prose.

The upstream planner writes sentences ("Log error and continue", "Attempt rollback to previous
state", "Check Docker daemon status and container existence"). We act on three modes only, so
the sentence is read by the documented table below: the first rule whose phrase occurs in the
lower-cased text wins; nothing matching means `abort`, the safe reading. The original text is
kept on the step spec and shown beside the interpretation, so an operator can see both.

1. rollback: rollback, roll back, revert, restore previous, restore the previous, undo
2. abort: abort, halt, stop execution, stop the plan, stop processing, do not continue,
   don't continue, fail the plan, fail the execution, cancel
3. continue: continue, proceed, skip, ignore, non-critical, not critical, alternative,
   limited information, best effort, best-effort
-  nothing matched: abort

Rollback comes first because "abort and roll back" asks for both and rollback implies the
abort; the negated "do not continue" is an abort rule so that it is never read as continue.
"""

from __future__ import annotations

from pydantic import BaseModel

from opsconductor.schema.enums import FailureHandling

FAILURE_RULES: tuple[tuple[FailureHandling, tuple[str, ...]], ...] = (
    (FailureHandling.ROLLBACK, ("rollback", "roll back", "revert", "restore previous",
                                "restore the previous", "undo")),
    (FailureHandling.ABORT, ("abort", "halt", "stop execution", "stop the plan",
                             "stop processing", "do not continue", "don't continue",
                             "fail the plan", "fail the execution", "cancel")),
    (FailureHandling.CONTINUE, ("continue", "proceed", "skip", "ignore", "non-critical",
                                "not critical", "alternative", "limited information",
                                "best effort", "best-effort")),
)
DEFAULT_RULE = "default: no phrase matched, abort"


class FailureReading(BaseModel):
    """One interpretation: the mode, the rule that decided it, and the text as written."""

    mode: FailureHandling
    rule: str
    text: str


def interpret_failure_handling(text: str | None) -> FailureReading:
    """Read `failure_handling` (an exact mode or prose) by FAILURE_RULES; default abort."""
    original = "" if text is None else str(text)
    lowered = " ".join(original.lower().split())
    if not lowered:
        return FailureReading(mode=FailureHandling.ABORT, rule="default: empty, abort",
                              text=original)
    if lowered in {m.value for m in FailureHandling}:
        return FailureReading(mode=FailureHandling(lowered), rule=f"exact: {lowered}",
                              text=original)
    for mode, phrases in FAILURE_RULES:
        for phrase in phrases:
            if phrase in lowered:
                return FailureReading(mode=mode, rule=f"phrase {phrase!r} -> {mode.value}",
                                      text=original)
    return FailureReading(mode=FailureHandling.ABORT, rule=DEFAULT_RULE, text=original)
