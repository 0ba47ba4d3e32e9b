-- Outputs by reference: a step's full masked output lives here, not in Temporal history.
-- One row per (execution, step, attempt, stream); stream is stdout, stderr or output (the
-- structured result as JSON text). `data` holds the stream's bytes as captured (up to the
-- per-stream cap; a truncated stream ends with a marker and `truncated` is set), compressed
-- with zlib when that pays (`encoding`). `size` and `sha256` describe the uncompressed bytes;
-- the step's result in history carries the same size, digest and a head/tail excerpt.
-- `execution.step_output_chunks` holds a command's output while it still runs, so
-- `opsconductor logs --follow` can stream it; the chunks of an attempt are dropped once its
-- full output is stored.
CREATE TABLE IF NOT EXISTS execution.step_outputs (
  execution_id  uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  step_id       text NOT NULL,
  attempt       int NOT NULL,
  stream        text NOT NULL,
  size          bigint NOT NULL,
  truncated     boolean NOT NULL DEFAULT false,
  sha256        text NOT NULL,
  encoding      text NOT NULL CHECK (encoding IN ('zlib', 'identity')),
  data          bytea NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (execution_id, step_id, attempt, stream)
);

CREATE TABLE IF NOT EXISTS execution.step_output_chunks (
  execution_id  uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  step_id       text NOT NULL,
  attempt       int NOT NULL,
  stream        text NOT NULL,
  seq           bigserial,
  data          bytea NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (execution_id, step_id, attempt, seq)
);
