-- Fleet steps: one row per target of a step that runs on many assets, so dashboards and
-- `opsconductor status` can show per-target progress while the step runs. `variant_id` is
-- the id the target's output is stored under in execution.step_outputs (`<step>@<target>`).
-- status: running, completed, failed, or skipped (not started: max_errors was exceeded or
-- the step was cancelled).
CREATE TABLE IF NOT EXISTS execution.step_targets (
  execution_id  uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  step_id       text NOT NULL,
  target        text NOT NULL,
  variant_id    text NOT NULL,
  attempt       int NOT NULL,
  status        text NOT NULL,
  exit_code     int,
  error         text,
  started_at    timestamptz,
  completed_at  timestamptz,
  PRIMARY KEY (execution_id, step_id, target)
);
