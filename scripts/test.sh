#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -k tadn -x    # extra args go to pytest
#   HYTREC_TEST_WORKERS=1 bash scripts/test.sh   # one process (default 2: test files spread over
#                                                # two pytest-xdist workers, a file stays on one)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${HYTREC_VENV:-$here/.venv}"
cd "$here"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
workers="${HYTREC_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != 1 ]; then parallel=(-n "$workers" --dist loadfile); fi
exec "$venv/bin/python" -m pytest -q --durations=15 ${parallel[@]+"${parallel[@]}"} "$@"
