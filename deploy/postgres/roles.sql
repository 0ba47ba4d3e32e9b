-- The group roles of migration 015_roles.sql, for a DBA who keeps CREATEROLE away from the
-- migrator: run this once per PostgreSQL server as a superuser (or a CREATEROLE admin), then
-- make login users members of the groups they need, e.g.
--   CREATE ROLE opsc_migrator LOGIN PASSWORD '...' IN ROLE opsc_owner;
--   CREATE DATABASE opsconductor OWNER opsc_migrator;
--   CREATE ROLE app_worker LOGIN PASSWORD '...' IN ROLE opsc_worker;
-- The migration finds the roles and leaves them as they are. Safe to run twice.
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['opsc_owner', 'opsc_worker', 'opsc_api_reader', 'opsc_operator',
                           'opsc_keys_admin', 'opsc_pruner'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END $$;
