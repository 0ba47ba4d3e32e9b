-- One process record per target of a step attempt: a fleet step (and a fan-out over assets)
-- runs one command per target inside one attempt, and each has its own process group. Kept
-- beside the attempt row (whose pgid/proc_start columns stay for single-target steps) so the
-- leftover-process guard knows every group an attempt started, not just the last one to
-- report, and a later attempt stops each (checked against its leader's start time) before it
-- acts. Depends on 003 and 007 (execution.step_attempts).
CREATE TABLE IF NOT EXISTS execution.attempt_processes (
  execution_id  uuid NOT NULL,
  step_id       text NOT NULL,
  attempt       int NOT NULL,
  target        text NOT NULL,
  process_host  text NOT NULL,
  pgid          int NOT NULL,
  proc_start    bigint,
  recorded_at   timestamptz NOT NULL DEFAULT now(),
  stopped_at    timestamptz,
  PRIMARY KEY (execution_id, step_id, attempt, target),
  FOREIGN KEY (execution_id, step_id, attempt)
    REFERENCES execution.step_attempts (execution_id, step_id, attempt) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS attempt_processes_live_idx
  ON execution.attempt_processes (step_id, execution_id) WHERE stopped_at IS NULL;

-- The worker records and stops its targets' groups (016's rule: a later table is writable by
-- none until its migration grants it).
GRANT INSERT, UPDATE ON execution.attempt_processes TO opsc_worker;
