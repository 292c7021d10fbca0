#!/usr/bin/env bash
# Set up, lint, and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check .
ruff format --check .
pytest -q "$@"
