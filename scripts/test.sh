#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite, the slow end-to-end tests on the real
# embedded model included (CI runs exactly this). For the fast suite alone: .venv/bin/pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/lint-imports  # the layers of DESIGN.md, declared in pyproject.toml
exec .venv/bin/pytest -m "slow or not slow" --durations=30 "$@"  # the slowest tests, to keep CI short
