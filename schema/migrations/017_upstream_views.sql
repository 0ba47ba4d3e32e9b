-- OpsConductor's readers read our steps and events as its models read them
-- (docs/upstream-compat.md, upstream-compat 2).
--
-- Two columns cannot mean both things under one name: a step's `step_id` (ours: the plan's
-- step id, text; OpsConductor's: a UUID) and the step statuses `pending`, `waiting`,
-- `skipped` (absent from its execution_status). So the tables our code writes take new names,
-- and the names OpsConductor's repository reads become views shaped as its models read them:
--   execution.execution_steps  -> table execution.step_runs,  view execution.execution_steps
--   execution.execution_events -> table execution.event_log,  view execution.execution_events
-- Rows, constraints, indexes, sequences, triggers and grants follow the tables (a rename keeps
-- them). The views give a UUID step id derived deterministically (RFC 4122 version 3 of the
-- step key in the execution id's namespace; a copied Phase 7 step keeps its own) and statuses
-- mapped onto its enum; the exact status and our step key stay in columns its models ignore.
-- Idempotent: safe to apply twice.

DO $$
BEGIN
  IF to_regclass('execution.step_runs') IS NULL THEN
    ALTER TABLE execution.execution_steps RENAME TO step_runs;
  END IF;
  IF to_regclass('execution.event_log') IS NULL THEN
    ALTER TABLE execution.execution_events RENAME TO event_log;
  END IF;
END $$;

-- The UUID OpsConductor reads as a step's id: uuid3(execution_id, step key), what Python's
-- uuid.uuid3(UUID(execution_id), step_id) gives (md5 is built in; SHA-1 for v5 is not).
CREATE OR REPLACE FUNCTION execution.step_uuid(p_execution uuid, p_step text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT (substr(h, 1, 12) || '3' || substr(h, 14, 3)
          || substr('89ab', (('x' || substr(h, 17, 1))::bit(4)::int & 3) + 1, 1)
          || substr(h, 18))::uuid
  FROM (SELECT md5(decode(replace(p_execution::text, '-', ''), 'hex')
                   || convert_to(p_step, 'UTF8')) AS h) x
$$;

-- A status as OpsConductor's execution_status names it: a step not yet started (`pending`)
-- or between tries (`waiting`) is `queued`; one never run (`skipped`) is `cancelled`
-- (neither a success nor a failure to its counters); every other value is its own.
CREATE OR REPLACE FUNCTION execution.upstream_status(p text) RETURNS execution.execution_status
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN p IN ('pending', 'waiting') THEN 'queued'::execution.execution_status
    WHEN p = 'skipped' THEN 'cancelled'::execution.execution_status
    WHEN p = ANY (enum_range(NULL::execution.execution_status)::text[])
      THEN p::execution.execution_status
  END
$$;

-- A text column OpsConductor reads as a UUID: the value when it is one, else NULL.
CREATE OR REPLACE FUNCTION execution.as_uuid(p text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN p ~* '^\{?[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}\}?$'
              THEN p::uuid END
$$;

-- A copied Phase 7 step keeps its own UUID (012 copied its text into step_id; its execution's
-- workflow_id is `phase7:<execution_id>`).
ALTER TABLE execution.step_runs ADD COLUMN IF NOT EXISTS upstream_step_id uuid;
UPDATE execution.step_runs s SET upstream_step_id = execution.as_uuid(s.step_id)
  FROM execution.executions e
 WHERE e.execution_id = s.execution_id AND e.workflow_id LIKE 'phase7:%'
   AND s.upstream_step_id IS NULL AND execution.as_uuid(s.step_id) IS NOT NULL;

-- Functions whose bodies named the old tables read and write the renamed ones.
CREATE OR REPLACE FUNCTION execution.upstream_result(p_execution_id uuid, r jsonb)
RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN r IS NULL OR jsonb_typeof(r) <> 'object' OR r ? 'step_results' THEN r
  ELSE r || (
    SELECT jsonb_build_object(
      'total_steps', count(*),
      'successful_steps', count(*) FILTER (WHERE s.status = 'completed'),
      'failed_steps', count(*) FILTER (WHERE s.status IN ('failed', 'timeout')),
      'step_results', coalesce(jsonb_agg(jsonb_build_object(
          'step_index', s.position, 'step_id', s.step_id, 'tool', s.tool,
          'target', s.target, 'status', s.status, 'exit_code', s.exit_code,
          'stdout', CASE WHEN s.tool LIKE 'asset-%' THEN '""'  -- its Asset Service: no stdout
                         ELSE coalesce(o.doc->'stdout', '""') END,
          'stderr', coalesce(o.doc->'stderr', '""'),
          'output', CASE WHEN jsonb_typeof(o.doc->'output'->'assets') = 'array'
                          AND NOT o.doc->'output' ? 'count'
                         THEN o.doc->'output' || jsonb_build_object(
                           'count', jsonb_array_length(o.doc->'output'->'assets'))
                         ELSE o.doc->'output' END,
          'error', s.error, 'attempts', s.attempts, 'started_at', s.started_at,
          'completed_at', s.completed_at, 'duration_ms', s.duration_ms)
        ORDER BY s.position), '[]'))
    FROM execution.step_runs s
    CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(s.output) = 'object' THEN s.output
                                    ELSE '{}'::jsonb END AS doc) o
    WHERE s.execution_id = p_execution_id)
  END
$$;

CREATE OR REPLACE FUNCTION execution.events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, execution AS $$
DECLARE
  v_tenant text;
  link record;
BEGIN
  SELECT e.tenant INTO v_tenant FROM execution.executions e
   WHERE e.execution_id = NEW.execution_id;
  IF v_tenant IS NULL THEN
    RETURN NEW;  -- the foreign key refuses the row anyway
  END IF;
  -- ON CONFLICT DO NOTHING would drop the row after this trigger: drop it here, before the
  -- chain advances (race-free: events_serialise holds the execution's advisory lock).
  IF EXISTS (SELECT 1 FROM execution.event_log x
              WHERE x.execution_id = NEW.execution_id AND x.event_key = NEW.event_key) THEN
    RETURN NULL;
  END IF;
  SELECT * INTO link FROM execution.audit_link(v_tenant, 'events', execution.audit_content(NEW));
  NEW.seq := link.seq; NEW.prev_hash := link.prev_hash; NEW.row_hash := link.row_hash;
  RETURN NEW;
END $$;

-- ------------------------------------------------------------------ the views
-- Columns in OpsConductor's model order first (its ExecutionStepModel / ExecutionEventModel),
-- then ours under names it does not read.
CREATE OR REPLACE VIEW execution.execution_steps AS
SELECT s.id,
       coalesce(s.upstream_step_id, execution.step_uuid(s.execution_id, s.step_id)) AS step_id,
       s.execution_id, s.step_index, s.step_name, s.step_type, s.target_asset_id,
       s.target_hostname, execution.upstream_status(s.status) AS status, s.started_at,
       s.completed_at, round(s.duration_ms)::bigint AS duration_ms, s.input_data,
       s.output_data, s.artifacts, s.error_message, s.error_details, s.retry_count,
       s.max_retries, execution.as_uuid(s.trace_id) AS trace_id, s.logs, s.created_at,
       s.updated_at,
       s.step_id AS step_key, s.status AS exact_status, s.position, s.tool, s.kind,
       s.action_class, s.description, s.target, s.attempts, s.exit_code, s.output, s.error,
       s.trace_id AS trace_text
  FROM execution.step_runs s;
COMMENT ON VIEW execution.execution_steps IS
  'OpsConductor''s step rows (upstream-compat 2): step_id a UUID, status its enum; ours are execution.step_runs';

CREATE OR REPLACE VIEW execution.execution_events AS
SELECT v.id, v.event_id, v.execution_id, v.event_type,
       execution.upstream_status(v.from_status) AS from_status,
       execution.upstream_status(v.to_status) AS to_status, v.actor_id, v.actor_type,
       v.details, v.error_message, v.created_at, execution.as_uuid(v.trace_id) AS trace_id,
       v.from_status AS exact_from_status, v.to_status AS exact_to_status, v.event_key,
       v.step_id AS step_key, v.actor, v.message, v.data, v.seq, v.prev_hash, v.row_hash
  FROM execution.event_log v;
COMMENT ON VIEW execution.execution_events IS
  'OpsConductor''s event rows (upstream-compat 2): statuses its enum; ours are execution.event_log';

-- Reads are open to every role (016); the views are read-only to all of them.
GRANT SELECT ON execution.execution_steps, execution.execution_events
  TO opsc_worker, opsc_api_reader, opsc_operator, opsc_keys_admin, opsc_pruner;

COMMENT ON SCHEMA execution IS
  'OpsConductor Execution mirror; OpsConductor Phase 7 readers supported (upstream-compat 2, migration 017)';
