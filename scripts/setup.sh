#!/usr/bin/env bash
# Creates .venv and installs palbert with the exact versions CI tests. Idempotent: re-running is quick.
# CPU PyTorch by default; for a GPU: PALBERT_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
# Without network: PALBERT_WHEELHOUSE=<folder made by scripts/make_wheelhouse.sh> bash scripts/setup.sh
set -euo pipefail
. "$(dirname "$0")/wheelhouse.sh"   # before the cd: a relative PALBERT_WHEELHOUSE is relative to the caller
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  pip install -q ${PALBERT_TORCH:-torch==2.13.0}
fi
pip install -q -r requirements-lock.txt
pip install -q --no-deps -e .
python -c "import palbert, torch, transformers; print(f'palbert ready: torch {torch.__version__}, transformers {transformers.__version__}')"
