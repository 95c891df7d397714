#!/bin/sh
# Container entry point of the coordinator: apply the database migrations, then serve.
#
# Server settings (the coordinator's own settings are the MFCPL_* variables of docs/operations.md):
#   MFCPL_HOST, MFCPL_PORT           bind address (0.0.0.0, 8000)
#   MFCPL_WORKERS                    uvicorn worker processes (2); WEB_CONCURRENCY is honoured too
#   MFCPL_FORWARDED_ALLOW_IPS        proxies trusted for X-Forwarded-For/-Proto ("*": the port must only be
#                                    reachable through the reverse proxy, as in compose.yaml and k8s/)
#   MFCPL_KEEPALIVE_S                idle keep-alive timeout; keep it above the proxy's upstream keepalive (75)
#   MFCPL_GRACEFUL_SHUTDOWN_S        on SIGTERM, how long in-flight requests and event streams may finish (25)
#   MFCPL_MIGRATE_ON_START           run `mfcpl db upgrade` first (true); false where a migration Job does it
#   MFCPL_MAX_UPDATE_BYTES           largest update body the coordinator accepts (256 MiB); the proxy's
#                                    client_max_body_size must match it
#   MFCPL_ACCESS_LOG                 log every request (false: the proxy's access log already does)
#   MFCPL_LOG_CONFIG                 logging dictConfig (JSON) for uvicorn and the coordinator (logging.json here)
#   PROMETHEUS_MULTIPROC_DIR         where the workers keep their Prometheus metrics, summed at each scrape
#                                    (/tmp/mfcpl-prometheus); emptied of its *.db files at each start
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)

: "${MFCPL_HOST:=0.0.0.0}"
: "${MFCPL_PORT:=8000}"
: "${MFCPL_WORKERS:=${WEB_CONCURRENCY:-2}}"
: "${MFCPL_FORWARDED_ALLOW_IPS:=*}"
: "${MFCPL_KEEPALIVE_S:=75}"
: "${MFCPL_GRACEFUL_SHUTDOWN_S:=25}"
: "${MFCPL_MIGRATE_ON_START:=true}"
: "${MFCPL_MAX_UPDATE_BYTES:=268435456}"
: "${MFCPL_LOG_CONFIG:=$here/logging.json}"
: "${MFCPL_ACCESS_LOG:=false}"
export MFCPL_MAX_UPDATE_BYTES

case "$MFCPL_MIGRATE_ON_START" in
  true | 1 | yes)
    # Concurrent replicas are safe: the upgrade holds a Postgres advisory lock.
    echo "mfcpl-start: applying database migrations" >&2
    mfcpl db upgrade
    # The schema is at head now; the workers need not each try again.
    MFCPL_AUTO_MIGRATE=false
    export MFCPL_AUTO_MIGRATE
    ;;
  false | 0 | no) ;;
  *)
    echo "mfcpl-start: MFCPL_MIGRATE_ON_START must be true or false, not '$MFCPL_MIGRATE_ON_START'" >&2
    exit 64
    ;;
esac

# Prometheus multiprocess mode: every worker writes its counters there and /metrics sums all of them, so each
# scrape gives the same totals whichever worker answers (docs/operations.md, "Observability").
: "${PROMETHEUS_MULTIPROC_DIR:=/tmp/mfcpl-prometheus}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db
export PROMETHEUS_MULTIPROC_DIR

case "$MFCPL_ACCESS_LOG" in
  true | 1 | yes) access_log=--access-log ;;
  *) access_log=--no-access-log ;;
esac

echo "mfcpl-start: serving on $MFCPL_HOST:$MFCPL_PORT with $MFCPL_WORKERS workers" >&2
# exec: uvicorn becomes this process, so SIGTERM from the runtime reaches it directly.
# --http: uvicorn's httptools protocol plus a header read timeout (MFCPL_HEADER_READ_TIMEOUT_S, docs/operations.md).
exec uvicorn coordinator.app:create_app --factory \
  --http coordinator.http_protocol:HeaderTimeoutHttpToolsProtocol \
  --host "$MFCPL_HOST" \
  --port "$MFCPL_PORT" \
  --workers "$MFCPL_WORKERS" \
  --proxy-headers \
  --forwarded-allow-ips "$MFCPL_FORWARDED_ALLOW_IPS" \
  --timeout-keep-alive "$MFCPL_KEEPALIVE_S" \
  --timeout-graceful-shutdown "$MFCPL_GRACEFUL_SHUTDOWN_S" \
  --log-config "$MFCPL_LOG_CONFIG" \
  --no-server-header \
  "$access_log"
