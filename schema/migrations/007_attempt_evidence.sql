-- Crash-safe steps: an attempt record is the durable fact a retry consults before acting.
-- Every step attempt (idempotent or not) is recorded at start and closed at its end with its
-- outcome and, on success, its masked result, so a retry that Temporal sends after losing a
-- result returns the recorded one instead of running again. Where the attempt's command runs
-- (host, process group and its start time) is recorded as soon as it exists, so a later
-- attempt can stop a group still alive without ever signalling a reused pid. A retry looks
-- at the attempts of the same step across the chain of linked runs
-- (executions.previous_execution_id: dlq requeue, re-runs), not just its own execution.
-- Depends on 003 (execution.step_attempts).
ALTER TABLE execution.step_attempts
  ADD COLUMN IF NOT EXISTS target       text,
  ADD COLUMN IF NOT EXISTS pgid         int,
  ADD COLUMN IF NOT EXISTS proc_start   bigint,
  ADD COLUMN IF NOT EXISTS process_host text,
  ADD COLUMN IF NOT EXISTS stopped_at   timestamptz,
  ADD COLUMN IF NOT EXISTS result       jsonb,
  ADD COLUMN IF NOT EXISTS resolved_by  text,
  ADD COLUMN IF NOT EXISTS resolved_at  timestamptz;
CREATE INDEX IF NOT EXISTS step_attempts_step_idx
  ON execution.step_attempts (step_id, execution_id);
CREATE INDEX IF NOT EXISTS executions_previous_idx
  ON execution.executions (previous_execution_id) WHERE previous_execution_id IS NOT NULL;
