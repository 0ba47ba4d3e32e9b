"""The run's event journal: events collect here and leave in the next mirror batch.

Its own module so the run state that owns a journal and the recorder that sends it each
import it, not each other.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from opsconductor.schema.messages import EventRecord


class Journal:
    """The run's events since the last mirror batch; `key` makes each write idempotent."""

    def __init__(self) -> None:
        self.events: list[EventRecord] = []
        self.seq = 0

    def emit(self, type_: str, *, step_id: str | None = None, from_status: str | None = None,
             to_status: str | None = None, actor: str | None = None,
             message: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.seq += 1
        self.events.append(EventRecord(
            key=f"wf:{self.seq}", type=type_, step_id=step_id, from_status=from_status,
            to_status=to_status, actor=actor, message=message, data=data or {},
            at=workflow.now()))

    def take(self) -> list[EventRecord]:
        events, self.events = self.events, []
        return events
