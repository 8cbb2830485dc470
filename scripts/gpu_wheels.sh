#!/usr/bin/env bash
# Fetch, here, the Python packages the GPU machine's image lacks, into .devwheels/ (git-ignored), for
# scripts/gpu_check.sh to install there without a package index. Its image has torch 2.11 (cu130),
# Python 3.12, pytorch-lightning, transformers, tokenizers, numpy, pyarrow, pandas, pytest; it lacks
# these (pinned to what .venv uses). wandb and mlflow are left out: the GPU steps run with
# WANDB_MODE=disabled and never touch the registry. ~6 MB; idempotent.
#   bash scripts/gpu_wheels.sh      # then run scripts/gpu_check.sh there with .devwheels carried along
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest=.devwheels
mkdir -p "$dest"
PY=${PYTHON:-python3}
wheels=(hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        hydra-submitit-launcher==1.2.0 submitit==1.5.4)
sdists=(antlr4-python3-runtime==4.9.3 deepspeed==0.19.8)  # published as source only
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$dest" "${wheels[@]}"
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$dest" "${sdists[@]}"
ls "$dest"
du -sh "$dest"
