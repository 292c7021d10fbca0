# Sourced by the scripts: project venv, Dagster home, telemetry off.
# shellcheck shell=bash
source .venv/bin/activate
export DAGSTER_HOME="$PWD/dagster_home"
export DAGSTER_DISABLE_TELEMETRY=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=false
export PYTHONUNBUFFERED=1
