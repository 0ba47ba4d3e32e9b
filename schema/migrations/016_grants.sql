-- What each role of 015_roles.sql may do (docs/security.md has the matrix). Reads are open
-- to every role; writes are the boundary:
--   * the worker appends to the audit (rbac_audit, execution_events: INSERT only) and can
--     never change the signer registry, the RBAC tables or the audit chain's bookkeeping;
--   * the API reader writes nothing;
--   * the operators' CLI claims idempotency records, appends audit and closes DLQ entries;
--     decisions and cancels travel through Temporal (the worker records them);
--   * the keys admin edits the signer registry and appends audit;
--   * the pruner deletes old outputs, events and audit rows (and records the gaps and signs
--     a checkpoint, as `opsconductor prune` does); operators sign checkpoints too.
-- Tables created later by opsc_owner are readable by every role (default privileges) and
-- writable by none until their migration grants it. Runs as opsc_owner (see migrate.py).
-- Idempotent: safe to apply twice.

GRANT USAGE ON SCHEMA execution
  TO opsc_worker, opsc_api_reader, opsc_operator, opsc_keys_admin, opsc_pruner;
GRANT SELECT ON ALL TABLES IN SCHEMA execution
  TO opsc_worker, opsc_api_reader, opsc_operator, opsc_keys_admin, opsc_pruner;
-- nextval() for the serial ids of the rows a role may insert (USAGE cannot setval)
GRANT USAGE ON ALL SEQUENCES IN SCHEMA execution
  TO opsc_worker, opsc_operator, opsc_keys_admin, opsc_pruner;

ALTER DEFAULT PRIVILEGES FOR ROLE opsc_owner IN SCHEMA execution GRANT SELECT ON TABLES
  TO opsc_worker, opsc_api_reader, opsc_operator, opsc_keys_admin, opsc_pruner;
ALTER DEFAULT PRIVILEGES FOR ROLE opsc_owner IN SCHEMA execution GRANT USAGE ON SEQUENCES
  TO opsc_worker, opsc_operator, opsc_keys_admin, opsc_pruner;

-- ------------------------------------------------------------------------------ worker
GRANT INSERT, UPDATE ON execution.executions, execution.execution_steps, execution.approvals,
  execution.step_attempts, execution.step_targets, execution.step_outputs TO opsc_worker;
GRANT INSERT ON execution.execution_events, execution.execution_dlq, execution.rbac_audit
  TO opsc_worker;
GRANT INSERT, DELETE ON execution.step_output_chunks TO opsc_worker;
GRANT INSERT, UPDATE, DELETE ON execution.execution_locks, execution.execution_lock_waiters
  TO opsc_worker;

-- ------------------------------------------------------------------------------ operators
GRANT INSERT, UPDATE ON execution.idempotency_records TO opsc_operator;
GRANT INSERT ON execution.rbac_audit TO opsc_operator;
GRANT UPDATE ON execution.execution_dlq TO opsc_operator;

-- ------------------------------------------------------------------------------ keys admin
GRANT INSERT, UPDATE, DELETE ON execution.rbac_signers TO opsc_keys_admin;
GRANT INSERT ON execution.rbac_audit TO opsc_keys_admin;

-- ------------------------------------------------------------------------------ pruner
GRANT DELETE ON execution.step_outputs, execution.step_output_chunks,
  execution.execution_events, execution.rbac_audit, execution.approvals TO opsc_pruner;

-- The audit chain's tables (013/014), where this database has them.
DO $$
DECLARE
  g record;
BEGIN
  FOR g IN
    SELECT * FROM (VALUES ('audit_checkpoints', 'INSERT', 'opsc_operator'),
                          ('audit_checkpoints', 'INSERT', 'opsc_pruner'),
                          ('audit_gaps', 'INSERT', 'opsc_pruner')) AS v(tbl, privs, grantee)
  LOOP
    IF to_regclass('execution.' || g.tbl) IS NOT NULL THEN
      EXECUTE format('GRANT %s ON execution.%I TO %I', g.privs, g.tbl, g.grantee);
    END IF;
  END LOOP;
END $$;

-- Triggers that write where the writer itself may not: the DLQ closing itself when a later
-- run succeeds (the worker may not update DLQ entries), the RBAC revision bumped by a
-- registry change (the keys admin may not write the revision row).
ALTER FUNCTION execution.dlq_resolve_on_success() SECURITY DEFINER
  SET search_path = pg_catalog, execution;
ALTER FUNCTION execution.rbac_bump_revision() SECURITY DEFINER
  SET search_path = pg_catalog, execution;

-- A SECURITY DEFINER function that is not a trigger runs as the owner for whoever calls it:
-- nobody may call one directly (triggers still do, as the owner) but those granted below.
DO $$
DECLARE
  f record;
BEGIN
  FOR f IN
    SELECT p.oid::regprocedure AS sig FROM pg_proc p
     WHERE p.pronamespace = 'execution'::regnamespace AND p.prosecdef
       AND p.prorettype <> 'trigger'::regtype
  LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f.sig);
  END LOOP;
  -- locking a chain's head before a checkpoint or a prune (never appending a link)
  IF to_regprocedure('execution.audit_lock_head(text, text)') IS NOT NULL THEN
    GRANT EXECUTE ON FUNCTION execution.audit_lock_head(text, text)
      TO opsc_operator, opsc_pruner;
  END IF;
END $$;
