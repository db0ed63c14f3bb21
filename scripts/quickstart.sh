#!/usr/bin/env bash
# Set up .venv if needed and run the main job on the embedded offline default (see scripts/quickstart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/quickstart.py "$@"
