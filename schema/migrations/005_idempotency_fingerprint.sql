-- Idempotency that means "the same request": every record carries the fingerprint of the
-- request that claimed it (everything that changes what runs, where, or who must approve), and
-- a claim whose key is reused with a different fingerprint is refused inside the same advisory
-- lock that serialises claims, so two racing requests cannot be merged. Idempotent.

ALTER TABLE execution.idempotency_records ADD COLUMN IF NOT EXISTS fingerprint text;
ALTER TABLE execution.idempotency_records ADD COLUMN IF NOT EXISTS caller_key text;

-- As idempotency_claim (002), plus: a key whose latest run in the window was claimed with a
-- different fingerprint raises SQLSTATE 'OPC01' naming the run, and nothing is written.
CREATE OR REPLACE FUNCTION execution.idempotency_claim_request(
  p_tenant text, p_key text, p_window_seconds double precision, p_execution_id uuid,
  p_workflow_prefix text, p_actor text, p_fingerprint text, p_caller_key text)
RETURNS TABLE (is_new boolean, run_number int, execution_id uuid, workflow_id text,
               status text, previous_execution_id uuid, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  v_last record;
  v_status text;
  v_max int;
  v_prev uuid;
  v_run int;
  v_wf text;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || chr(31) || p_key, 7423005));
  SELECT r.*, e.status::text AS live_status INTO v_last
    FROM execution.idempotency_records r
    LEFT JOIN execution.executions e ON e.execution_id = r.execution_id
   WHERE r.tenant = p_tenant AND r.idem_key = p_key
   ORDER BY r.run_number DESC LIMIT 1;
  IF FOUND THEN
    v_max := v_last.run_number;
    IF v_last.created_at > now() - make_interval(secs => p_window_seconds)
       AND v_last.fingerprint IS NOT NULL AND v_last.fingerprint <> p_fingerprint THEN
      RAISE EXCEPTION USING ERRCODE = 'OPC01',
        MESSAGE = format('idempotency key %s was used by execution %s for a different request',
                         coalesce(p_caller_key, p_key), v_last.execution_id),
        DETAIL = v_last.execution_id::text;
    END IF;
    v_status := CASE
      WHEN v_last.status IN ('completed', 'failed', 'cancelled', 'timeout', 'rejected', 'partial')
        THEN v_last.status
      ELSE coalesce(v_last.live_status, v_last.status) END;
    IF v_last.created_at > now() - make_interval(secs => p_window_seconds) THEN
      IF v_status NOT IN ('failed', 'cancelled', 'timeout', 'rejected') THEN
        RETURN QUERY SELECT false, v_last.run_number, v_last.execution_id, v_last.workflow_id,
                            v_status, v_last.previous_execution_id, v_last.created_at;
        RETURN;
      END IF;
      v_prev := v_last.execution_id;
    END IF;
  ELSE
    v_max := 0;
  END IF;
  v_run := v_max + 1;
  v_wf := CASE WHEN v_run = 1 THEN p_workflow_prefix ELSE p_workflow_prefix || '-r' || v_run END;
  INSERT INTO execution.idempotency_records AS r
    (tenant, idem_key, run_number, execution_id, workflow_id, status, previous_execution_id,
     actor, fingerprint, caller_key)
  VALUES (p_tenant, p_key, v_run, p_execution_id, v_wf, 'pending', v_prev, p_actor,
          p_fingerprint, p_caller_key);
  RETURN QUERY SELECT true, v_run, p_execution_id, v_wf, 'pending'::text, v_prev, now();
END $$;
