# The training image: NGC PyTorch (CUDA, cuDNN, NCCL and a torch built against exactly those),
# this project installed on top, and the csrc/ CUDA kernels compiled here, at build time, for
# the GPU architectures in TORCH_CUDA_ARCH_LIST (nothing compiles when a job starts).
#
#   docker build -t trainer:dev .
#   docker build -t trainer:h100 --build-arg TORCH_CUDA_ARCH_LIST="9.0" .
#   docker run --rm --gpus all --shm-size=16g --ulimit memlock=-1 -v "$PWD/runs:/workspace/runs" \
#       trainer:dev experiment=gpt2_124m trainer.devices=8
#
# Runtime notes (see docs/cluster.md):
# - /dev/shm: Docker's default is 64 MiB; loader workers and NCCL need more. Give --shm-size
#   (about 64 MiB x loader workers x GPUs plus 1 GiB; the trainer's preflight names the number)
#   or --ipc=host. Kubernetes: the rendered PyTorchJob mounts a memory-backed /dev/shm.
# - NCCL: the entrypoint sets NCCL_DEBUG=WARN and TORCH_NCCL_ASYNC_ERROR_HANDLING=1 unless set.
#   Name the fabric for multi-node jobs when auto-detection picks the wrong one:
#   NCCL_SOCKET_IFNAME=ib0|eth0, NCCL_IB_HCA=mlx5. InfiniBand needs --ulimit memlock=-1.
# - Runs are written under /workspace/runs: mount shared storage there so restarts resume.
# - The image runs as the unprivileged user "trainer" (pyxis/enroot runs as the submitting user).

# Pinned: CUDA 13.0, NCCL and torch come from this one release. Bump deliberately, all together.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.08-py3
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A100 8.0, A10/RTX 30 8.6, L4/L40 8.9, H100/H200 9.0 (+PTX: runs on newer GPUs through the driver's JIT).
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
ARG MAX_JOBS=8
ARG TRAINER_UID=10001
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    TRAINER_CACHE=/opt/trainer/cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN useradd --no-log-init --create-home --uid "${TRAINER_UID}" --shell /bin/bash trainer

WORKDIR /opt/trainer
# Dependencies first (a layer that survives code edits), keeping the base image's torch:
# a plain `pip install` could replace the NGC build with a generic wheel.
COPY pyproject.toml ./
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /opt/torch-constraint.txt \
 && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.startswith('torch')))" > /tmp/requirements.txt
RUN pip install --constraint /opt/torch-constraint.txt -r /tmp/requirements.txt

COPY configs/ configs/
COPY csrc/ csrc/
COPY launch/ launch/
COPY scripts/ scripts/
COPY trainer/ trainer/
# Editable: configs/ sits beside the package, where trainer.config looks for it.
RUN pip install --constraint /opt/torch-constraint.txt --no-deps --no-build-isolation -e . \
 && python -m trainer.ops.build \
 && mkdir -p /workspace/runs "${TRAINER_CACHE}" \
 && chown -R trainer:trainer /workspace "${TRAINER_CACHE}"

USER ${TRAINER_UID}
WORKDIR /workspace
ENTRYPOINT ["/opt/trainer/scripts/entrypoint.sh"]
CMD []
