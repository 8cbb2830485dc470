#!/usr/bin/env bash
# The container's entrypoint: environment defaults for distributed training, then the command.
#
#   docker run IMAGE                                   -> python -m trainer.train
#   docker run IMAGE experiment=gpt2_124m +x=1         -> python -m trainer.train experiment=gpt2_124m +x=1
#   docker run IMAGE torchrun -m trainer.train ...     -> runs as given (Kubernetes passes args like this)
#
# Every default yields to a value already set (docker -e, pyxis, a PyTorchJob's env).
set -euo pipefail

# Restarted workers rejoin reliably only when the agent's rendezvous store is not shared
# with the workers (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
# A failed or timed-out collective raises (and the launcher restarts) instead of hanging.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}"

# A W&B key mounted as a file (a Kubernetes/Docker secret) rather than passed in the environment.
if [ -z "${WANDB_API_KEY:-}" ] && [ -n "${WANDB_API_KEY_FILE:-}" ]; then
  if [ ! -r "$WANDB_API_KEY_FILE" ]; then
    echo "entrypoint: WANDB_API_KEY_FILE=$WANDB_API_KEY_FILE is not readable" >&2
    exit 2
  fi
  WANDB_API_KEY="$(tr -d '[:space:]' < "$WANDB_API_KEY_FILE")"
  export WANDB_API_KEY
fi

# No command, or only Hydra overrides/flags: train.
if [ "$#" -eq 0 ] || [[ "$1" == *=* ]] || [[ "$1" == -* ]]; then
  set -- python -m trainer.train "$@"
fi
exec "$@"
