#!/bin/sh
# First start of the compose deployment's PostgreSQL (docker-entrypoint-initdb.d, run as the
# superuser): Temporal's two databases and its own login, the mirror's database owned by its
# migrator, the group roles of migration 015 and one login per service in its group.
# Passwords come from files (Docker secrets); none is ever on a command line or in the env.
set -eu
SECRETS_DIR=${SECRETS_DIR:-/run/secrets}
pw() { cat "$SECRETS_DIR/$1"; }

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v temporal_pw="$(pw temporal_db_password)" \
  -v migrator_pw="$(pw opsc_migrator_password)" \
  -v worker_pw="$(pw opsc_worker_password)" \
  -v api_pw="$(pw opsc_api_password)" \
  -v pruner_pw="$(pw opsc_pruner_password)" \
  -f "${ROLES_SQL:-/opt/opsconductor/roles.sql}" -f - <<'SQL'
CREATE ROLE temporal LOGIN PASSWORD :'temporal_pw';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;

CREATE ROLE opsc_migrator LOGIN PASSWORD :'migrator_pw' IN ROLE opsc_owner;
CREATE DATABASE opsconductor OWNER opsc_migrator;
REVOKE ALL ON DATABASE opsconductor FROM PUBLIC;
GRANT CONNECT ON DATABASE opsconductor
  TO opsc_owner, opsc_worker, opsc_api_reader, opsc_operator, opsc_keys_admin, opsc_pruner;
REVOKE ALL ON DATABASE temporal, temporal_visibility FROM PUBLIC;

CREATE ROLE opsc_app_worker LOGIN PASSWORD :'worker_pw' IN ROLE opsc_worker;
CREATE ROLE opsc_app_api LOGIN PASSWORD :'api_pw' IN ROLE opsc_api_reader;
CREATE ROLE opsc_app_pruner LOGIN PASSWORD :'pruner_pw' IN ROLE opsc_pruner;
SQL
