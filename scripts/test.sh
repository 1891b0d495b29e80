#!/usr/bin/env bash
# Set up a virtual environment with every extra and run the test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/ruff check provgraph adapters tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
