#!/usr/bin/env bash
# Set up .venv if needed and run the test suite (CPU, tiny local models, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
