# The training image, from one of two bases (BASE_IMAGE):
# - GPU clusters (the default): NGC PyTorch, pinned by digest: CUDA, cuDNN, NCCL and a torch built against
#   exactly those come from that one release, and the csrc/ CUDA kernels are compiled here, at build time,
#   for TORCH_CUDA_ARCH_LIST (nothing compiles when a job starts);
# - CPU (tests, laptops): a local Debian base with Python (scripts/container.sh builds it with mmdebstrap);
#   torch then comes from the pinned set, the build TORCH_BUILD names (cpu: the CPU-only wheel).
# On top: the project's pinned dependency set (requirements/constraints.txt; packages the base already
# has keep the base's version), EXTRAS, and this source tree.
#
#   scripts/container.sh                  # CPU image: base, image, smoke test (podman)
#   docker build -t trainer:1.0 --build-arg GIT_SHA="$(git rev-parse HEAD)" .   # GPU image (BuildKit)
#   docker build -t trainer:h100 --build-arg TORCH_CUDA_ARCH_LIST="9.0" --build-arg GIT_SHA="$(git rev-parse HEAD)" .
#   mkdir -p runs   # yours: a missing directory would be created by the daemon, owned by root
#   docker run --rm --gpus all --shm-size=16g --ulimit memlock=-1 --user "$(id -u):$(id -g)" \
#       -v "$PWD/runs:/workspace/runs" trainer:1.0 experiment=gpt2_124m trainer.devices=8
#
# Runtime notes (README, "The container"):
# - /dev/shm: Docker's default is 64 MiB; loader workers and NCCL need more. Give --shm-size
#   (about 64 MiB x loader workers x GPUs plus 1 GiB; the trainer's preflight names the number)
#   or --ipc=host. Kubernetes: the rendered PyTorchJob mounts a memory-backed /dev/shm.
# - NCCL: the entrypoint sets NCCL_DEBUG=WARN and TORCH_NCCL_ASYNC_ERROR_HANDLING=1 unless set.
#   Name the fabric for multi-node jobs when auto-detection picks the wrong one:
#   NCCL_SOCKET_IFNAME=ib0|eth0, NCCL_IB_HCA=mlx5. InfiniBand needs --ulimit memlock=-1.
# - Runs are written under /workspace/runs: mount shared storage there so restarts resume. The image
#   runs as the unprivileged user "trainer" (uid 10001); with a host directory mounted there, run as its
#   owner (--user "$(id -u):$(id -g)"; rootless podman: --userns=keep-id). Any uid can write HOME and
#   the cache. pyxis/enroot runs as the submitting user.
# - Build with BuildKit (docker) or `podman build --format docker` (SHELL needs it). Build-time settings for pip (a CA bundle, a local wheel directory, an index) are mounted by the
#   build command (scripts/container.sh does it from the host's `pip config`), never written into a layer.

# NGC 26.06: torch 2.13.0a0, CUDA 13.3, Python 3.12. Bump deliberately, all together.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:26.06-py3@sha256:43c018d6a12963f1a1bad85ef8574b5c2a978eec2be0ebcacfb87f69e0d210e1

# The dependency list alone (pyproject's dependencies and EXTRAS), in a stage of its own: the install layer
# below is keyed on this list's content, so a pyproject.toml edit that leaves the dependencies as they are
# (entry points, tool settings: most of its edits) does not reinstall everything.
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=deepspeed
COPY pyproject.toml /tmp/
RUN python3 -c "import tomllib, sys; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" "$EXTRAS" \
    > /tmp/requirements.txt

FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A100 8.0, A10/RTX 30 8.6, L4/L40 8.9, H100/H200 9.0 (+PTX: runs on newer GPUs through the driver's JIT).
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
ARG MAX_JOBS=8
ARG TRAINER_UID=10001
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    PATH=/opt/venv/bin:${PATH} \
    HOME=/home/trainer \
    TRAINER_CACHE=/opt/trainer/cache \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# HOME and the cache are world-writable (sticky, like /tmp): a run as any uid (--user) can write its
# W&B settings, HF and kernel caches there.
RUN useradd --no-log-init --uid "${TRAINER_UID}" --home-dir /home/trainer --shell /bin/bash trainer \
 && mkdir -p /home/trainer /opt/trainer/cache /workspace/runs \
 && chown trainer:trainer /home/trainer /opt/trainer/cache /workspace /workspace/runs \
 && chmod 1777 /home/trainer /opt/trainer/cache

# A venv that sees the base's packages: NGC's torch stays, the Debian base gets pip from ensurepip.
RUN python3 -m venv --system-site-packages /opt/venv \
 || python3 -m venv --system-site-packages --without-pip /opt/venv

# Dependencies before the sources, so that a code edit rebuilds none of this.
# PIP_CONFIG_FILE: optional, a pip configuration the build command mounts (scripts/container.sh).
ARG PIP_CONFIG_FILE
ARG TORCH_BUILD=default
WORKDIR /opt/trainer
COPY requirements/constraints.txt requirements/
COPY scripts/torch_build.sh scripts/base_constraints.py scripts/
COPY --from=requirements /tmp/requirements.txt ./
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    export PIP_CACHE_DIR=/root/.cache/pip \
 && python scripts/base_constraints.py requirements/constraints.txt > /opt/trainer/constraints.txt \
 && . scripts/torch_build.sh && index_args=$(torch_index_args) \
 && python -m pip install -q -c constraints.txt $index_args torch \
 && python -m pip install -q -c constraints.txt -r requirements.txt

COPY pyproject.toml setup.py README.md ./
COPY configs/ configs/
COPY csrc/ csrc/
COPY examples/ examples/
COPY launch/ launch/
COPY scripts/ scripts/
COPY trainer/ trainer/
# Editable: configs/, csrc/ and examples/ stay beside the package, where the trainer looks for them.
# The kernels are built only where torch has CUDA (the CPU paths are used only with kernels=fused).
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PIP_CACHE_DIR=/root/.cache/pip python -m pip install -q -c constraints.txt --no-deps -e . \
 && if python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then python -m trainer.ops.build; fi

# Last, so that a new commit rebuilds only this: the manifest records it (no .git in the image).
ARG GIT_SHA=unknown
ARG GIT_DIRTY=unknown
# podman/buildah keys an ENV or LABEL layer on its text before ${} expansion, a RUN layer on the build args
# too: without this RUN a commit that changes no copied file reused the previous commit's sha.
RUN echo "${GIT_SHA} ${GIT_DIRTY}" > /opt/trainer/git-revision
LABEL org.opencontainers.image.revision="${GIT_SHA}"
ENV TRAINER_GIT_SHA=${GIT_SHA} \
    TRAINER_GIT_DIRTY=${GIT_DIRTY}

USER ${TRAINER_UID}
WORKDIR /workspace
ENTRYPOINT ["/opt/trainer/scripts/entrypoint.sh"]
CMD []
