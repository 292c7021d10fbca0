#!/usr/bin/env bash
# Create .venv with Python 3.11 and install clipforge with every pinned dependency.
# Idempotent: a second run only checks that the environment is complete.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "clipforge needs Python 3.11")'

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.clipforge-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # constraints.txt pins the whole resolved set; torch/torchvision come from this machine's disk.
    .venv/bin/python -m pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]'
    # Dagster 1.13's asset-selection parser (`dagster asset materialize --select ...`) needs
    # antlr4 4.13; dvc -> hydra-core -> omegaconf pins 4.9, used only by `dvc exp run -S`
    # (not by `dvc repro`). The selection CLI wins; pip cannot express the override.
    .venv/bin/python -m pip install --quiet --no-deps antlr4-python3-runtime==4.13.2
    echo "$want" > "$stamp"
fi

# No network: every tool's telemetry stays off.
export DAGSTER_DISABLE_TELEMETRY=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=false
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
