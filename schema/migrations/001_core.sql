-- Core mirror of executions: statuses, steps, approvals, events, DLQ, timeout policy.
CREATE SCHEMA IF NOT EXISTS execution;

-- A database made by OpsConductor's own init-schema.sql already holds its Phase 7 tables under
-- these names (executions with tenant_id, not tenant). They move, rows and all, to schema
-- execution_phase7; 012_upstream_compat.sql copies their rows into the tables made below.
-- Nothing happens on any other database.
DO $$
DECLARE t text;
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'execution'
             AND table_name = 'executions' AND column_name = 'tenant_id')
     AND NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'execution'
                     AND table_name = 'executions' AND column_name = 'tenant') THEN
    CREATE SCHEMA IF NOT EXISTS execution_phase7;
    FOREACH t IN ARRAY ARRAY['executions', 'execution_steps', 'approvals', 'execution_events',
                             'execution_queue', 'execution_dlq', 'execution_locks',
                             'timeout_policies'] LOOP
      IF to_regclass('execution.' || t) IS NOT NULL THEN
        EXECUTE format('ALTER TABLE execution.%I SET SCHEMA execution_phase7', t);
      END IF;
    END LOOP;
  END IF;
END $$;

DO $$ BEGIN
  CREATE TYPE execution.execution_status AS ENUM ('pending_approval', 'approved', 'rejected',
    'queued', 'running', 'completed', 'failed', 'cancelled', 'timeout', 'partial');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
  CREATE TYPE execution.execution_mode AS ENUM ('immediate', 'background');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
  CREATE TYPE execution.sla_class AS ENUM ('fast', 'medium', 'long');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
  CREATE TYPE execution.approval_state AS ENUM ('pending', 'approved', 'rejected', 'expired');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE TABLE IF NOT EXISTS execution.executions (
  execution_id          uuid PRIMARY KEY,
  workflow_id           text NOT NULL UNIQUE,
  run_id                text,
  tenant                text NOT NULL,
  actor                 text NOT NULL,
  environment           text NOT NULL,
  title                 text NOT NULL DEFAULT '',
  status                execution.execution_status NOT NULL DEFAULT 'queued',
  mode                  execution.execution_mode NOT NULL,
  sla_class             execution.sla_class NOT NULL,
  approval_state        execution.approval_state,
  approval_level        int NOT NULL DEFAULT 0,
  idempotency_key       text NOT NULL,
  plan_hash             text NOT NULL,
  step_count            int NOT NULL DEFAULT 0,
  steps_completed       int NOT NULL DEFAULT 0,
  steps_failed          int NOT NULL DEFAULT 0,
  assets                text[] NOT NULL DEFAULT '{}',
  tags                  text[] NOT NULL DEFAULT '{}',
  metadata              jsonb NOT NULL DEFAULT '{}'::jsonb,
  trace_id              text,
  spec                  jsonb NOT NULL,
  result                jsonb,
  error                 text,
  cancel_actor          text,
  cancel_reason         text,
  previous_execution_id uuid,
  created_at            timestamptz NOT NULL DEFAULT now(),
  started_at            timestamptz,
  completed_at          timestamptz,
  deadline_at           timestamptz,
  updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS executions_tenant_status_idx
  ON execution.executions (tenant, status, created_at DESC);
CREATE INDEX IF NOT EXISTS executions_status_idx ON execution.executions (status, created_at DESC);
CREATE INDEX IF NOT EXISTS executions_created_idx ON execution.executions (created_at DESC);
CREATE INDEX IF NOT EXISTS executions_idem_idx ON execution.executions (tenant, idempotency_key);

CREATE TABLE IF NOT EXISTS execution.execution_steps (
  execution_id   uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  step_id        text NOT NULL,
  position       int NOT NULL,
  tool           text NOT NULL,
  kind           text NOT NULL,
  action_class   text NOT NULL,
  description    text NOT NULL DEFAULT '',
  target         text,
  status         text NOT NULL DEFAULT 'pending',
  attempts       int NOT NULL DEFAULT 0,
  started_at     timestamptz,
  completed_at   timestamptz,
  duration_ms    double precision,
  exit_code      int,
  output         jsonb,
  error          text,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (execution_id, step_id)
);
CREATE INDEX IF NOT EXISTS execution_steps_target_idx
  ON execution.execution_steps (target, started_at) WHERE target IS NOT NULL;

CREATE TABLE IF NOT EXISTS execution.approvals (
  id                 bigserial PRIMARY KEY,
  execution_id       uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  gate               text NOT NULL,
  plan_hash          text NOT NULL,
  state              execution.approval_state NOT NULL DEFAULT 'pending',
  required_approvals int NOT NULL,
  required_role      text,
  senior_role        text,
  requested_at       timestamptz NOT NULL,
  expires_at         timestamptz,
  decided_at         timestamptz,
  decisions          jsonb NOT NULL DEFAULT '[]'::jsonb,
  updated_at         timestamptz NOT NULL DEFAULT now(),
  UNIQUE (execution_id, gate)
);
CREATE INDEX IF NOT EXISTS approvals_pending_idx ON execution.approvals (state)
  WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS execution.execution_events (
  id            bigserial PRIMARY KEY,
  execution_id  uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  event_key     text NOT NULL,
  event_type    text NOT NULL,
  step_id       text,
  from_status   text,
  to_status     text,
  actor         text,
  message       text,
  data          jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (execution_id, event_key)
);
CREATE INDEX IF NOT EXISTS execution_events_exec_idx ON execution.execution_events (execution_id, id);

CREATE TABLE IF NOT EXISTS execution.execution_dlq (
  id                  bigserial PRIMARY KEY,
  execution_id        uuid NOT NULL REFERENCES execution.executions ON DELETE CASCADE,
  workflow_id         text NOT NULL,
  step_id             text,
  reason              text NOT NULL,
  error_type          text,
  payload             jsonb NOT NULL DEFAULT '{}'::jsonb,
  status              text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'requeued', 'discarded')),
  created_at          timestamptz NOT NULL DEFAULT now(),
  requeued_at         timestamptz,
  requeued_by         text,
  requeued_execution_id uuid,
  UNIQUE NULLS NOT DISTINCT (execution_id, step_id)
);
CREATE INDEX IF NOT EXISTS execution_dlq_open_idx ON execution.execution_dlq (created_at) WHERE status = 'open';

CREATE TABLE IF NOT EXISTS execution.timeout_policies (
  sla_class                  execution.sla_class NOT NULL,
  action_class               text NOT NULL CHECK (action_class IN ('read', 'modify', 'deploy')),
  step_timeout_seconds       double precision NOT NULL,
  execution_timeout_seconds  double precision NOT NULL,
  approval_timeout_seconds   double precision NOT NULL,
  max_attempts               int NOT NULL,
  heartbeat_timeout_seconds  double precision NOT NULL DEFAULT 5,
  initial_backoff_seconds    double precision NOT NULL DEFAULT 1,
  max_backoff_seconds        double precision NOT NULL DEFAULT 30,
  backoff_coefficient        double precision NOT NULL DEFAULT 2,
  PRIMARY KEY (sla_class, action_class)
);
INSERT INTO execution.timeout_policies
  (sla_class, action_class, step_timeout_seconds, execution_timeout_seconds,
   approval_timeout_seconds, max_attempts, initial_backoff_seconds, max_backoff_seconds)
VALUES
  ('fast',   'read',     30,   600,   3600, 3, 1,  10),
  ('fast',   'modify',   60,   900,   3600, 2, 1,  10),
  ('fast',   'deploy',  120,   900,   3600, 1, 1,  10),
  ('medium', 'read',    120,  1800,  14400, 3, 2,  30),
  ('medium', 'modify',  300,  3600,  14400, 2, 2,  30),
  ('medium', 'deploy',  600,  3600,  14400, 1, 2,  30),
  ('long',   'read',    900,  7200,  86400, 3, 5,  60),
  ('long',   'modify', 1800, 14400,  86400, 2, 5,  60),
  ('long',   'deploy', 3600, 14400,  86400, 1, 5,  60)
ON CONFLICT (sla_class, action_class) DO NOTHING;
