#!/usr/bin/env bash
# The test command: sets up what it needs, checks the style (ruff), then runs the whole suite (GPU-only tests skip on CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup_env.sh"
cd "$root"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m ruff check .  # the style (ruff.toml); its findings fail the run before any test starts
# One worker per core (SALM_TEST_WORKERS overrides); a test file stays on one worker, so its
# module fixtures (trainings, checkpoints) are built once; files go out in collection order
# (conftest.py puts the longest first), not by their number of tests.
python -m pytest -q -p no:cacheprovider -n "${SALM_TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder \
  --durations=15 tests "$@"
