#!/usr/bin/env bash
# Start Debian's PostgreSQL on 127.0.0.1 and create the role the tests use (idempotent).
# Prints the URI of a maintenance database the tests connect to to create their own databases.
set -euo pipefail
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  root pg_createcluster "$version" main >&2
fi
read -r version cluster port _ < <(pg_lsclusters -h | head -1)
root pg_ctlcluster "$version" "$cluster" start >&2 || true
for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p "$port" -q && break; sleep 1; done
as_postgres psql -v ON_ERROR_STOP=1 -q -c "DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline_test') THEN
    CREATE ROLE pipeline_test LOGIN CREATEDB PASSWORD 'pipeline_test';
  END IF; END\$\$;" >&2
echo "postgresql://pipeline_test:pipeline_test@127.0.0.1:${port}/postgres"
