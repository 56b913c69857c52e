#!/usr/bin/env bash
# Install what is needed (scripts/setup.sh), then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# OpenMP threads sleep instead of spinning at barriers: on a busy machine spinning threads that lose their core stall
# every other thread (hear_dymn sets the same default on import; set here too for anything that loads torch first)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
