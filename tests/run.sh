#!/usr/bin/env bash
# The test command: sets up what it needs, then runs the whole suite (GPU-only tests skip on CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup_env.sh"
cd "$root"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
