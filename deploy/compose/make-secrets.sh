#!/bin/sh
# Make the secret files docker-compose.temporal.yml reads (./secrets at the repository's top,
# or the directory given): random passwords, and each service's database URL holding its own
# login's password. Existing files are kept, so running it again changes nothing. The files
# are readable by the containers' users (they are bind-mounted as they are); the directory
# itself is private (0700).
set -eu
dir=${1:-"$(dirname "$0")/../../secrets"}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
new() { [ -s "$1" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$1"; }
for name in postgres_password temporal_db_password opsc_migrator_password \
            opsc_worker_password opsc_api_password opsc_pruner_password; do
  new "$name"
done
url() {  # url FILE USER PASSWORD-FILE
  [ -s "$1" ] || printf 'postgresql://%s:%s@postgres:5432/opsconductor\n' "$2" "$(cat "$3")" \
    > "$1"
}
url opsc_migrator_database_url opsc_migrator opsc_migrator_password
url opsc_worker_database_url opsc_app_worker opsc_worker_password
url opsc_api_database_url opsc_app_api opsc_api_password
url opsc_pruner_database_url opsc_app_pruner opsc_pruner_password
chmod 644 ./*
echo "secrets in $(pwd)"
