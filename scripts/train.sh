#!/usr/bin/env bash
# Set up (first run only) and train. Any Hydra overrides pass through:
#   bash scripts/train.sh                       # the default: a small GPT on this CPU, a few minutes
#   bash scripts/train.sh trainer.max_steps=50 run.id=try1
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/bootstrap.sh"  # the core only: the default run needs no extra
exec "${TRAINER_VENV:-$here/.venv}/bin/python" -m trainer.train "$@"
