#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite, the slow end-to-end tests on the real
# embedded model included (CI runs exactly this). For the fast suite alone: .venv/bin/pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/lint-imports  # the layers of DESIGN.md, declared in pyproject.toml
# Two workers, one thread each (two PyTorch thread pools on two cores spin against each other); each test file
# stays on one worker, so its module fixtures are built once; the slowest tests are listed, to keep CI short.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/pytest -m "slow or not slow" -n "${TEST_WORKERS:-2}" --dist loadfile --durations=30 "$@"
