#!/usr/bin/env bash
# Set up .venv if needed and run the main job on the embedded offline default: the paper's whole experiment
# (teacher, baselines, soft and hard students, extraction, predictor, report) on the King James Bible.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/evalmem pipeline --recipe recipes/tiny-kjv.yaml --out exp/tiny-kjv --jobs 2 "$@"
