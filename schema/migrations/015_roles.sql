-- Least-privilege roles (docs/security.md). Group roles, NOLOGIN: a deployment creates its own
-- login users and makes each a member of the one group it needs, e.g.
--   CREATE ROLE app_worker LOGIN PASSWORD '...' IN ROLE opsc_worker;
--
--   opsc_owner       owns the schema and every object in it; runs `opsconductor db migrate`
--   opsc_worker      the worker: writes the mirror, locks, attempts, outputs; appends audit
--   opsc_api_reader  `opsconductor serve`: reads only
--   opsc_operator    operators' CLI and Stage D's client: submit, decide, cancel, DLQ
--   opsc_keys_admin  the signer registry (`opsconductor keys`)
--   opsc_pruner      the scheduled `opsconductor prune`: deletes by age, never edits
-- What each may do is granted in 016_grants.sql.
--
-- Roles belong to the whole server: those that exist already (made by a DBA who keeps
-- CREATEROLE away from the migrator, see deploy/postgres/roles.sql) are kept as they are.
-- The user running this becomes a member of opsc_owner (superusers are already), and the
-- schema with everything in it passes to opsc_owner; from now on `db migrate` runs each
-- migration as opsc_owner, so new objects have one owner and its default privileges.
-- Idempotent: safe to apply twice.

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
  IF NOT pg_has_role(current_user, 'opsc_owner', 'MEMBER') THEN
    EXECUTE format('GRANT opsc_owner TO %I', current_user);
  END IF;
  -- a schema's owner must hold CREATE on its database
  IF NOT has_database_privilege('opsc_owner', current_database(), 'CREATE') THEN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO opsc_owner', current_database());
  END IF;
END $$;

DO $$
DECLARE
  o record;
  owner_oid oid := 'opsc_owner'::regrole;
BEGIN
  IF (SELECT nspowner FROM pg_namespace WHERE nspname = 'execution') <> owner_oid THEN
    ALTER SCHEMA execution OWNER TO opsc_owner;
  END IF;
  -- relations first: a table takes its serial/identity sequences along
  FOR o IN
    SELECT c.relname, c.relkind FROM pg_class c
     WHERE c.relnamespace = 'execution'::regnamespace AND c.relowner <> owner_oid
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  LOOP
    EXECUTE format('ALTER %s execution.%I OWNER TO opsc_owner',
                   CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                  WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, o.relname);
  END LOOP;
  FOR o IN
    SELECT c.relname FROM pg_class c
     WHERE c.relnamespace = 'execution'::regnamespace AND c.relowner <> owner_oid
       AND c.relkind = 'S'
  LOOP
    EXECUTE format('ALTER SEQUENCE execution.%I OWNER TO opsc_owner', o.relname);
  END LOOP;
  -- enums, domains, ranges and free-standing composite types (not a table's row type or
  -- an array type, which follow their table or element)
  FOR o IN
    SELECT t.typname FROM pg_type t
     WHERE t.typnamespace = 'execution'::regnamespace AND t.typowner <> owner_oid
       AND t.typelem = 0 AND t.typtype IN ('e', 'd', 'r', 'c')
       AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  LOOP
    EXECUTE format('ALTER TYPE execution.%I OWNER TO opsc_owner', o.typname);
  END LOOP;
  FOR o IN
    SELECT p.oid::regprocedure AS sig, p.prokind FROM pg_proc p
     WHERE p.pronamespace = 'execution'::regnamespace AND p.proowner <> owner_oid
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO opsc_owner',
                   CASE o.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
                                  ELSE 'FUNCTION' END, o.sig);
  END LOOP;
END $$;
