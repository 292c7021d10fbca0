#!/usr/bin/env bash
# Set up, lint, check the import layers, and run every test (inner loop: pytest -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check .
ruff format --check .
lint-imports --no-cache          # the layers of docs/architecture.md (contracts in pyproject.toml)
python -m chain.dvc_yaml --check # dvc.yaml is what chain/spec.py generates
pytest -q --durations=15 "$@"
