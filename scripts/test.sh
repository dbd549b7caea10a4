#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -k tadn -x    # extra args go to pytest
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${HYTREC_VENV:-$here/.venv}"
cd "$here"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
exec "$venv/bin/python" -m pytest -q --durations=15 "$@"
