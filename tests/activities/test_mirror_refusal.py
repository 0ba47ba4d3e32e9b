"""A mirror batch PostgreSQL refuses for its data fails at once, visibly, and says so.

Retrying such a batch can only fail the same way (the issue's NUL byte was retried forever,
a traceback every few seconds); connection trouble stays retryable.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from opsconductor.activities.mirror import MirrorActivities
from opsconductor.schema.enums import ApprovalState
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import ApprovalRecord, EventRecord, MirrorWrite
from tests.helpers import request, shell

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_refused_batch_fails_without_retry_and_leaves_an_event(engine: Any) -> None:
    resp = await engine.execute(request([shell("a", "echo a")]), wait=True)
    eid = resp.execution_id
    bad = MirrorWrite(
        execution_id=eid, workflow_id=resp.workflow_id,
        events=[EventRecord(key=f"probe:{uuid.uuid4().hex}", type="probe")],
        approvals=[ApprovalRecord(gate="gate\x00with-nul", state=ApprovalState.PENDING,
                                  plan_hash="h", required_approvals=1,
                                  requested_at=datetime.now(UTC))])
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(MirrorActivities(pool=engine.pool).mirror_write, bad)
    err = raised.value
    assert err.type == ErrorType.MIRROR_WRITE_REFUSED and err.non_retryable
    assert "refused by PostgreSQL" in err.message and "\x00" not in err.message
    rows = await engine.pool.fetch(
        "SELECT event_type, message, data FROM execution.event_log"
        " WHERE execution_id = $1 AND event_type = 'mirror.write_refused'", uuid.UUID(eid))
    assert len(rows) == 1 and "refused by PostgreSQL" in rows[0]["message"]
    probe = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.event_log WHERE execution_id = $1"
        " AND event_type = 'probe'", uuid.UUID(eid))
    assert probe == 0  # the refused batch was rolled back as a whole
