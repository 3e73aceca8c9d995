# Sourced by bin/run and bin/test: ports, secrets and the engine's derived settings.
# shellcheck shell=bash
set -a
[[ -f var/secrets.env ]] && source var/secrets.env
APP_PORT=${APP_PORT:-8000}
RASA_PORT=${RASA_PORT:-5005}
DATABASE_URL=${DATABASE_URL:-sqlite:///$PWD/var/crm.db}
ACTION_ENDPOINT_URL=${ACTION_ENDPOINT_URL:-http://127.0.0.1:$APP_PORT/webhook}
if [[ -z "${TRACKER_STORE_URL:-}" ]]; then
  case "$DATABASE_URL" in
    postgres://*) TRACKER_STORE_URL="postgresql://${DATABASE_URL#postgres://}" ;;
    postgresql://*) TRACKER_STORE_URL=$DATABASE_URL ;;
    *) TRACKER_STORE_URL="sqlite:///$PWD/var/tracker.db" ;;
  esac
fi
PYTHONPATH=$PWD
# The engine must not phone home (telemetry, error reports): this machine holds citizen data.
RASA_TELEMETRY_ENABLED=false
set +a
