#!/usr/bin/env bash
# The main job on a fresh machine: set up, fetch the embedded model, fine-tune it on the bundled
# order-to-JSON data, evaluate base vs tuned, export adapter + merged checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tunesmith quickstart "$@"
