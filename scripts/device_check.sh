#!/usr/bin/env bash
# GPU speed check in one command: writes reports/speed_gpu.md within 8 minutes on one NVIDIA GPU
# (timm / open_clip ViT-B-16, ViT-L/14 if time allows; batch 256; bf16 and fp32; eager and compiled).
# Without a GPU it runs the same code on the CPU at a small size and says so in the report.
# Installs nothing beyond scripts/setup_env.sh; PRUNING_BENCH_PYTHON=/path/to/python skips that step.
# Extra arguments go to benchmarks/device_check.py (--output, --budget-seconds, --cpu, --no-large ...).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PRUNING_BENCH_PYTHON:-}" ]; then
  PY="$PRUNING_BENCH_PYTHON"
else
  VENV="$(bash scripts/setup_env.sh | tail -n 1)"
  PY="$VENV/bin/python"
fi
if [ -n "${TOME_REFERENCE_PATH:-}" ]; then
  export PYTHONPATH="${TOME_REFERENCE_PATH}${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" benchmarks/device_check.py "$@"
