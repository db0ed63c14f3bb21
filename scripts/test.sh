#!/usr/bin/env bash
# Set up .venv and Chromium if needed and run the test suite (CPU, tiny local models, no downloads).
# The report's browser tests need Chromium: installed with apt-get where there is one, required then.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing Chromium for the report's browser tests" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
if command -v chromium >/dev/null 2>&1; then export EVALMEM_REQUIRE_BROWSER=1; fi  # fail instead of skipping
exec .venv/bin/python -m pytest "$@"
