#!/usr/bin/env bash
# Set up (first run only) and run the test suite. Extra arguments go to pytest:
#   bash scripts/test.sh                 # the default suite, slow tests included (what CI runs)
#   bash scripts/test.sh -m "not slow"   # the quick part
#   bash scripts/test.sh --extended      # also the extended tier (tests/conftest.py)
# Tests run on TEST_WORKERS pytest-xdist workers (default 2: most tests wait on subprocesses that start
# torch, so two share 2 cores well); TEST_WORKERS=0 runs them in this process, one at a time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
scripts/bootstrap.sh all  # every extra: the tests cover DeepSpeed, the launchers, reports, evaluation
# System packages for the cluster tests (SLURM, munge); needs root, skipped (tests skip too) elsewhere.
if [ "$(id -u)" = 0 ] && [ -x scripts/ci_system_deps.sh ]; then scripts/ci_system_deps.sh || echo "system deps unavailable: cluster tests will skip" >&2; fi
export WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
workers=${TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then exec .venv/bin/python -m pytest --durations=30 "$@"; fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup --durations=30 "$@"
