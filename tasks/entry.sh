#!/bin/sh
# The Fargate task's entry: runs `pgvault "$@"`, the very command the dispatch, verify and restore
# functions put in the container override (`backup full daily`, `restore pitr auto app --target-time ...`).
#
# The environment is the task's: the task definition's (CLOUD_*, ENCRYPTION, COMPRESSION, RETENTION_*,
# SNS_TOPIC_ARN, EVENT_BUS_NAME, ...; the passphrase and the database credentials as ECS secrets:
# ENCRYPTION_KEY, PGUSER, PGPASSWORD) plus the override's CLUSTER_NAME, PGHOST, PGPORT, PGDATABASE and
# DEPLOYMENT_MODE. pgvault reads them as it reads them anywhere (core/config.ts). A restore into another
# server (the restore function's `target`) overrides PGHOST, PGPORT and PGDATABASE and may name a
# credentials secret in PGVAULT_PG_SECRET_ARN: pgvault reads it at start with the task role and uses its
# username and password (core/pg/credentials-secret.ts); its value is never in the environment ECS sees.
#
# `exec`: pgvault becomes the container's main process, so ECS's SIGTERM on a stop reaches it (it then
# removes what it stored, exit 143) and its exit code is the task's exit code, which the stack's
# task-state rule turns into an alert when it is not 0.
set -eu

if [ "$#" -eq 0 ]; then
    echo "pgvault task: no command given; the functions pass one, e.g. backup full daily" >&2
    exit 2
fi

# The launcher of this checkout (tasks/../bin/pgvault), else PGVAULT_BIN, else pgvault on the PATH.
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
if [ -n "${PGVAULT_BIN-}" ]; then
    pgvault=$PGVAULT_BIN
elif [ -x "$here/../bin/pgvault" ]; then
    pgvault=$here/../bin/pgvault
else
    pgvault=pgvault
fi

# One line for the task's log, before pgvault's own: which cluster, which command (no secret is in it).
echo "pgvault task: cluster ${CLUSTER_NAME:-default} (${DEPLOYMENT_MODE:-single-node} at ${PGHOST:-localhost}:${PGPORT:-5432}): pgvault $*" >&2
exec "$pgvault" "$@"
