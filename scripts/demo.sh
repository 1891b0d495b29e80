#!/usr/bin/env bash
# Set up a virtual environment and run the demo campaign end to end.
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all]"
if .venv/bin/provgraph demo --help >/dev/null 2>&1; then
  exec .venv/bin/provgraph demo "$@"
fi
exec .venv/bin/python examples/two_workflows/run.py "$@"
