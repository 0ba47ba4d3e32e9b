-- Live event stream: the mirror announces new events so followers LISTEN instead of polling.
--
-- Channel `opsc_events`, payload `<execution_id>:<highest new event id>`, one notification per
-- execution per INSERT statement (a statement-level trigger over the inserted rows), sent at
-- commit. Event ids of one execution are handed out in commit order: a row's id is drawn
-- only once its transaction holds a per-execution advisory lock (held to commit), so a
-- follower that resumes after id N can never miss an event committed later with a smaller id.
-- Idempotent: safe to apply twice.

CREATE OR REPLACE FUNCTION execution.events_serialise() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(NEW.execution_id::text, 7423009));
  NEW.id := nextval('execution.execution_events_id_seq');
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION execution.events_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('opsc_events', n.execution_id::text || ':' || n.last_id)
  FROM (SELECT execution_id, max(id) AS last_id FROM new_events GROUP BY execution_id) n;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS execution_events_serialise ON execution.execution_events;
CREATE TRIGGER execution_events_serialise
  BEFORE INSERT ON execution.execution_events
  FOR EACH ROW EXECUTE FUNCTION execution.events_serialise();

DROP TRIGGER IF EXISTS execution_events_announce ON execution.execution_events;
CREATE TRIGGER execution_events_announce
  AFTER INSERT ON execution.execution_events
  REFERENCING NEW TABLE AS new_events
  FOR EACH STATEMENT EXECUTE FUNCTION execution.events_announce();
