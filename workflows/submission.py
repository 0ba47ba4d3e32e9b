"""Before anything of an execution runs, the worker checks that its actor asked for it.

Where the policy requires signed submissions, a spec without its actor's signature, or one
that differs from the envelope the actor signed, ends the run `failed` before any gate, lock
or step. One local activity; a recorded history from before this check replays unchanged.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from opsconductor.schema.decisions import SignatureVerdict
    from opsconductor.schema.enums import ExecutionStatus
    from opsconductor.schema.spec import ExecutionSpec

from opsconductor.workflows.options import AUTHZ_RETRY, AUTHZ_TIMEOUT
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.state import RunState

SUBMISSION_PROOF = "submission-proof"


async def submission_accepted(spec: ExecutionSpec, state: RunState, recorder: Recorder) -> bool:
    """Verify the submission (patched in: old histories have no such call)."""
    if not workflow.patched(SUBMISSION_PROOF):
        return True
    verdict = await workflow.execute_local_activity(
        "verify_submission", spec, result_type=SignatureVerdict,
        start_to_close_timeout=AUTHZ_TIMEOUT, retry_policy=AUTHZ_RETRY)
    if verdict.accepted:
        if verdict.signed:
            state.journal.emit("submission.verified", actor=spec.actor,
                               message=f"signed by {spec.actor} with key "
                                       f"{verdict.key_fingerprint}",
                               data={"key_fingerprint": verdict.key_fingerprint})
        return True
    state.journal.emit("submission.refused", actor=spec.actor, message=verdict.reason,
                       data={"signed": verdict.signed,
                             "key_fingerprint": verdict.key_fingerprint})
    state.end(ExecutionStatus.FAILED, f"submission refused: {verdict.reason}")
    await recorder.flush()
    return False
