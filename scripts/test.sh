#!/usr/bin/env bash
# Set up the environment from scratch if needed, then run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash scripts/setup_env.sh | tail -n 1)"
exec "$VENV/bin/python" -m pytest -q "$@"
