"""The mirror's step and event rows as SQL and bound arrays, shared by the mirror write and
the attempt records (which write the same rows in the same statement), so neither imports the
other.
"""

from __future__ import annotations

from typing import Any

from opsconductor.schema.messages import EventRecord, StepRecord
from opsconductor.schema.outputs import escape_text, safe_json_text

EVENT_COLUMNS = ("key text", "type text", "step_id text", "from_status text", "to_status text",
                 "actor text", "message text", "data text", "at timestamptz")
STEP_COLUMNS = ("step_id text", "status text", "attempts int", "started_at timestamptz",
                "completed_at timestamptz", "exit_code int", "output text", "error text")


def _unnest(columns: tuple[str, ...], first: int) -> str:
    """`unnest($first::t1[], ...) AS u(c1, ...)`: array parameters, one per column."""
    params = ", ".join(f"${first + i}::{c.split()[1]}[]" for i, c in enumerate(columns))
    return f"unnest({params}) AS u({', '.join(c.split()[0] for c in columns)})"


def _event_insert(first: int) -> str:
    return f"""
INSERT INTO execution.event_log
  (execution_id, event_key, event_type, step_id, from_status, to_status, actor, message, data,
   created_at)
SELECT $1::uuid, u.key, u.type, u.step_id, u.from_status, u.to_status, u.actor, u.message,
       u.data::jsonb, coalesce(u.at, now())
FROM {_unnest(EVENT_COLUMNS, first)}
ON CONFLICT (execution_id, event_key) DO NOTHING"""


def _step_update(first: int) -> str:
    return f"""
UPDATE execution.step_runs AS s SET
  status = u.status, attempts = greatest(s.attempts, u.attempts),
  started_at = coalesce(u.started_at, s.started_at),
  completed_at = coalesce(u.completed_at, s.completed_at),
  duration_ms = extract(epoch FROM coalesce(u.completed_at, s.completed_at)
                        - coalesce(u.started_at, s.started_at)) * 1000,
  exit_code = coalesce(u.exit_code, s.exit_code),
  output = coalesce(u.output::jsonb, s.output),
  error = CASE WHEN u.status = 'completed' THEN u.error ELSE coalesce(u.error, s.error) END,
  updated_at = now()
FROM {_unnest(STEP_COLUMNS, first)}
WHERE s.execution_id = $1::uuid AND s.step_id = u.step_id"""


EVENT_INSERT = _event_insert(2)
STEP_UPSERT = _step_update(2)
STEP_AND_EVENT = f"WITH step AS ({_step_update(2)})\n{_event_insert(2 + len(STEP_COLUMNS))}"


def _json(value: Any) -> str | None:
    return None if value is None else safe_json_text(value)


def _text(value: str | None) -> str | None:
    """Text a PostgreSQL text column takes: NUL and lone surrogates escaped, never refused."""
    return None if value is None else escape_text(value)


def _event_arrays(events: list[EventRecord]) -> list[list[Any]]:
    return [[e.key for e in events], [e.type for e in events], [e.step_id for e in events],
            [e.from_status for e in events], [e.to_status for e in events],
            [_text(e.actor) for e in events], [_text(e.message) for e in events],
            [safe_json_text(e.data) for e in events], [e.at for e in events]]


def _step_arrays(steps: list[StepRecord]) -> list[list[Any]]:
    return [[s.step_id for s in steps], [s.status.value for s in steps],
            [s.attempts for s in steps], [s.started_at for s in steps],
            [s.completed_at for s in steps], [s.exit_code for s in steps],
            [_json(s.output) for s in steps], [_text(s.error) for s in steps]]
