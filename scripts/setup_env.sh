#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything into it.
# torch and torchvision are pinned first: on these machines pip takes them from local disk,
# and torchvision from the registry does not import beside other torch builds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PRUNING_BENCH_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
echo "$VENV"
