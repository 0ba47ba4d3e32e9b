#!/bin/sh
# Temporal's persistence and visibility schemas in their own databases (made by
# deploy/postgres/init.sh), set up or upgraded to this admin-tools release's versions: run
# before every start of a new Temporal release (the compose file does). Idempotent.
set -eu
export SQL_PASSWORD="$(cat "${TEMPORAL_DB_PASSWORD_FILE:-/run/secrets/temporal_db_password}")"
tool() {
  temporal-sql-tool --plugin postgres12 --ep "${POSTGRES_SEEDS:-postgres}" \
    -p "${DB_PORT:-5432}" -u "${POSTGRES_USER:-temporal}" --db "$@"
}
schema=/etc/temporal/schema/postgresql/v12
for pair in "temporal:temporal" "temporal_visibility:visibility"; do
  db=${pair%%:*}; dir=${pair##*:}
  tool "$db" setup-schema -v 0.0      # creates the version table only on a new database
  tool "$db" update-schema -d "$schema/$dir/versioned"
  echo "temporal schema $db is up to date"
done
