-- OpsConductor's Phase 7 execution schema as its database/init-schema.sql creates it
-- (andrewcho-dev/opsconductor-ng at 01ac757c): the facts only — the 4 enums, the 8 tables
-- with their column names, types, defaults and constraints, and the 9 timeout policies —
-- written out here for the tests. Indexes are left out: nothing we test depends on them.
CREATE SCHEMA IF NOT EXISTS execution;

CREATE TYPE execution.execution_status AS ENUM ('pending_approval', 'approved', 'rejected',
  'queued', 'running', 'completed', 'failed', 'cancelled', 'timeout', 'partial');
CREATE TYPE execution.execution_mode AS ENUM ('immediate', 'background');
CREATE TYPE execution.sla_class AS ENUM ('fast', 'medium', 'long');
CREATE TYPE execution.approval_state AS ENUM ('pending', 'approved', 'rejected', 'expired');

CREATE TABLE execution.executions (
  id serial PRIMARY KEY,
  execution_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  tenant_id varchar(255) NOT NULL,
  actor_id integer NOT NULL,
  idempotency_key varchar(64) NOT NULL,
  plan_snapshot jsonb NOT NULL,
  execution_mode execution.execution_mode NOT NULL,
  sla_class execution.sla_class NOT NULL,
  approval_level integer NOT NULL CHECK (approval_level BETWEEN 0 AND 3),
  status execution.execution_status NOT NULL DEFAULT 'pending_approval',
  previous_status execution.execution_status,
  status_changed_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  started_at timestamptz,
  completed_at timestamptz,
  timeout_at timestamptz,
  result jsonb,
  error_message text,
  error_details jsonb,
  trace_id uuid,
  parent_execution_id uuid,
  tags jsonb DEFAULT '[]',
  metadata jsonb DEFAULT '{}',
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT unique_idempotency_per_tenant UNIQUE (tenant_id, idempotency_key),
  CONSTRAINT valid_approval_level CHECK (approval_level IN (0, 1, 2, 3))
);

CREATE TABLE execution.execution_steps (
  id serial PRIMARY KEY,
  step_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  execution_id uuid NOT NULL REFERENCES execution.executions (execution_id) ON DELETE CASCADE,
  step_index integer NOT NULL,
  step_name varchar(255) NOT NULL,
  step_type varchar(100) NOT NULL,
  target_asset_id integer,
  target_hostname varchar(255),
  status execution.execution_status NOT NULL DEFAULT 'queued',
  started_at timestamptz,
  completed_at timestamptz,
  duration_ms integer,
  input_data jsonb,
  output_data jsonb,
  artifacts jsonb,
  error_message text,
  error_details jsonb,
  retry_count integer DEFAULT 0,
  max_retries integer DEFAULT 3,
  trace_id uuid,
  logs text,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT unique_step_per_execution UNIQUE (execution_id, step_index)
);

CREATE TABLE execution.approvals (
  id serial PRIMARY KEY,
  approval_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  execution_id uuid NOT NULL REFERENCES execution.executions (execution_id) ON DELETE CASCADE,
  approval_level integer NOT NULL CHECK (approval_level BETWEEN 1 AND 3),
  plan_hash varchar(64) NOT NULL,
  approver_id integer,
  approver_comment text,
  state execution.approval_state NOT NULL DEFAULT 'pending',
  requested_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  expires_at timestamptz,
  responded_at timestamptz,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT one_approval_per_execution UNIQUE (execution_id)
);

CREATE TABLE execution.execution_events (
  id serial PRIMARY KEY,
  event_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  execution_id uuid NOT NULL REFERENCES execution.executions (execution_id) ON DELETE CASCADE,
  event_type varchar(100) NOT NULL,
  from_status execution.execution_status,
  to_status execution.execution_status,
  actor_id integer,
  actor_type varchar(50),
  details jsonb,
  error_message text,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  trace_id uuid
);

CREATE TABLE execution.execution_queue (
  id serial PRIMARY KEY,
  queue_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  execution_id uuid NOT NULL REFERENCES execution.executions (execution_id) ON DELETE CASCADE,
  priority integer DEFAULT 5,
  sla_class execution.sla_class NOT NULL,
  lease_token uuid,
  lease_expires_at timestamptz,
  visibility_timeout_seconds integer,
  attempt_count integer DEFAULT 0,
  max_attempts integer DEFAULT 3,
  last_error text,
  enqueued_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  dequeued_at timestamptz,
  completed_at timestamptz,
  status varchar(50) DEFAULT 'pending',
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT unique_execution_in_queue UNIQUE (execution_id)
);

CREATE TABLE execution.execution_dlq (
  id serial PRIMARY KEY,
  dlq_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  execution_id uuid NOT NULL REFERENCES execution.executions (execution_id) ON DELETE CASCADE,
  failure_reason text NOT NULL,
  failure_details jsonb,
  attempt_count integer NOT NULL,
  last_error text,
  original_queue_id uuid,
  sla_class execution.sla_class NOT NULL,
  failed_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  requeued boolean DEFAULT false,
  requeued_at timestamptz,
  requeued_by integer,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT unique_execution_in_dlq UNIQUE (execution_id)
);

CREATE TABLE execution.execution_locks (
  id serial PRIMARY KEY,
  lock_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  asset_id integer NOT NULL,
  tenant_id varchar(255) NOT NULL,
  execution_id uuid NOT NULL REFERENCES execution.executions (execution_id) ON DELETE CASCADE,
  owner_tag varchar(255) NOT NULL,
  acquired_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  expires_at timestamptz NOT NULL,
  last_heartbeat_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  is_active boolean DEFAULT true,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT unique_lock_per_asset_tenant UNIQUE (asset_id, tenant_id)
);

CREATE TABLE execution.timeout_policies (
  id serial PRIMARY KEY,
  sla_class execution.sla_class NOT NULL,
  action_class varchar(50) NOT NULL,
  step_timeout_seconds integer NOT NULL,
  execution_timeout_seconds integer NOT NULL,
  lease_timeout_seconds integer NOT NULL,
  approval_timeout_seconds integer,
  max_attempts integer NOT NULL,
  description text,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT unique_timeout_policy UNIQUE (sla_class, action_class)
);

-- sla, action, step s, execution s, lease s, approval s, attempts
INSERT INTO execution.timeout_policies (sla_class, action_class, step_timeout_seconds,
  execution_timeout_seconds, lease_timeout_seconds, approval_timeout_seconds, max_attempts)
VALUES ('fast', 'read', 5, 10, 15, 300, 3), ('fast', 'modify', 8, 15, 20, 600, 3),
       ('fast', 'deploy', 10, 20, 30, 900, 3), ('medium', 'read', 15, 30, 45, 600, 5),
       ('medium', 'modify', 20, 45, 60, 900, 5), ('medium', 'deploy', 30, 60, 90, 1800, 5),
       ('long', 'read', 60, 300, 360, 1800, 3), ('long', 'modify', 120, 600, 720, 3600, 3),
       ('long', 'deploy', 300, 1800, 2160, 7200, 3);
