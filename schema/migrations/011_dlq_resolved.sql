-- Dead letters close themselves: when a later run of the same plan (same tenant and plan
-- hash) completes, the open entries of the earlier runs become `resolved`, pointing at the
-- run that succeeded (`requeued_execution_id`). A trigger on the execution's status, so it
-- holds for runs started by `dlq requeue`, by the caller again, or any other way.
-- Idempotent: safe to apply twice.

ALTER TABLE execution.execution_dlq DROP CONSTRAINT IF EXISTS execution_dlq_status_check;
ALTER TABLE execution.execution_dlq ADD CONSTRAINT execution_dlq_status_check
  CHECK (status IN ('open', 'requeued', 'discarded', 'resolved'));

CREATE OR REPLACE FUNCTION execution.dlq_resolve_on_success() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE execution.execution_dlq d
     SET status = 'resolved', requeued_at = now(),
         requeued_execution_id = NEW.execution_id
   WHERE d.status IN ('open', 'requeued')
     AND d.execution_id IN (SELECT e.execution_id FROM execution.executions e
                            WHERE e.tenant = NEW.tenant AND e.plan_hash = NEW.plan_hash
                              AND e.execution_id <> NEW.execution_id
                              AND e.created_at <= NEW.created_at);
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS executions_dlq_resolve ON execution.executions;
CREATE TRIGGER executions_dlq_resolve
  AFTER UPDATE OF status ON execution.executions
  FOR EACH ROW WHEN (NEW.status = 'completed' AND OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION execution.dlq_resolve_on_success();
