-- The unknown-outcome guard: every attempt of a non-idempotent step is recorded before it
-- acts (in the same transaction as the step's "running" mirror write) and closed when it
-- ends. An attempt that started and never finished means its worker died mid-step: the step
-- is not re-run blindly. Depends only on 001 (execution.executions).
CREATE TABLE IF NOT EXISTS execution.step_attempts (
  execution_id  uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  step_id       text NOT NULL,
  attempt       int NOT NULL CHECK (attempt >= 1),
  worker        text NOT NULL,
  started_at    timestamptz NOT NULL DEFAULT now(),
  finished_at   timestamptz,
  outcome       text,
  detail        text,
  PRIMARY KEY (execution_id, step_id, attempt),
  CHECK ((finished_at IS NULL) = (outcome IS NULL))
);
CREATE INDEX IF NOT EXISTS step_attempts_unfinished_idx
  ON execution.step_attempts (execution_id, step_id) WHERE finished_at IS NULL;
