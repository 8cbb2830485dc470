#!/usr/bin/env bash
# The CPU training image with podman, from nothing to a trained step, in one command:
#
#   scripts/container.sh              # base (cached) + image + smoke test
#   scripts/container.sh base         # the Debian base: mmdebstrap, then podman import (cached by day and inputs)
#   scripts/container.sh image        # the image from ./Dockerfile on that base (layer cache: seconds when warm)
#   scripts/container.sh smoke        # train 5 steps of the default experiment in it, into a mounted runs dir
#   scripts/container.sh podman ARGS  # podman with the settings this script uses (run, rm, history, inspect ...)
#
# Settings: IMAGE (localhost/trainer:cpu), EXTRAS (deepspeed), TORCH_BUILD (cpu, or default when the host's
# pip configuration offers a local torch wheel of the pinned version), CONTAINER_CACHE
# (/var/cache/trainer-container), BASE_TAG (by default one per day and inputs), BUILD_CONTEXT (.: the
# source tree to build), BUILD_FLAGS (more `podman build` flags, e.g. --no-cache). Needs root, podman, runc and mmdebstrap (scripts/ci_system_deps.sh).
# Docker: `docker build --build-arg BASE_IMAGE=... .` builds the same Dockerfile (README, "The container").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE=${IMAGE:-localhost/trainer:cpu}
EXTRAS=${EXTRAS-deepspeed}
CACHE=${CONTAINER_CACHE:-/var/cache/trainer-container}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
mkdir -p "$CACHE"

# This host's quirks, harmless elsewhere: the default OCI runtime fails on hybrid cgroups (runc with
# cgroupfs works) and setrlimit is not permitted (no default ulimits). A CONTAINERS_CONF you set wins.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  printf '[containers]\ndefault_ulimits = []\n' > "$CACHE/containers.conf"
  export CONTAINERS_CONF="$CACHE/containers.conf"
fi
podman_() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

base_tag() {
  # One base per day and per inputs: the Debian archive moves; rebuilding once a day keeps security fixes.
  if [ -n "${BASE_TAG:-}" ]; then echo "$BASE_TAG"; return; fi
  local key
  key=$(printf '%s %s %s' "$SUITE" "$BASE_PACKAGES" "$(date -u +%Y%m%d)" | sha256sum | cut -c1-12)
  echo "localhost/trainer-base:$SUITE-$key"
}

build_base() {
  local tag tmp
  tag=$(base_tag)
  exec 9>"$CACHE/base.lock"
  flock 9  # concurrent callers wait for one build
  if podman_ image exists "$tag"; then echo "$tag"; return; fi
  tmp=$(mktemp -d "$CACHE/base.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  echo "container: building $tag with mmdebstrap (about a minute)" >&2
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp/rootfs.tar" >&2
  podman_ import --quiet "$tmp/rootfs.tar" "$tag" >/dev/null
  echo "$tag"
}

torch_build() {
  # The CPU image wants the CPU wheel: a local one the host's pip finds (find-links) as it is, else PyTorch's CPU index.
  if [ -n "${TORCH_BUILD:-}" ]; then echo "$TORCH_BUILD"; return; fi
  local pin dirs
  pin=$(sed -n 's/^torch==//p' requirements/constraints.txt)
  dirs=$(python3 -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p")
  for d in $dirs; do
    if compgen -G "$d/torch-$pin+cpu-*.whl" >/dev/null; then echo default; return; fi
  done
  echo cpu
}

build_image() {
  local base conf sha dirty mounts=()
  base=$(build_base)
  conf=$(mktemp -d)
  trap 'rm -rf "$conf"' RETURN
  while read -r m; do mounts+=(-v "$m"); done < <(python3 scripts/host_pip_settings.py "$conf")
  local context=${BUILD_CONTEXT:-.}
  sha=$(git -C "$context" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$context" status --porcelain --untracked-files=no 2>/dev/null || echo unknown)
  case "$dirty" in unknown) ;; "") dirty=false ;; *) dirty=true ;; esac
  echo "container: building $IMAGE from $base (git $sha, dirty=$dirty)" >&2
  # shellcheck disable=SC2086
  podman_ build --isolation=chroot --format docker --pull=never --layers ${BUILD_FLAGS:-} -t "$IMAGE" \
    -f "$context/Dockerfile" \
    --build-arg BASE_IMAGE="$base" --build-arg TORCH_BUILD="$(torch_build)" --build-arg EXTRAS="$EXTRAS" \
    --build-arg GIT_SHA="$sha" --build-arg GIT_DIRTY="$dirty" \
    --build-arg PIP_CONFIG_FILE=/run/host-pip/conf/pip.conf "${mounts[@]}" "$context" >&2
  echo "$IMAGE"
}

smoke() {
  local runs start
  runs=$(mktemp -d)
  trap 'rm -rf "$runs"' RETURN
  chown 4242:4242 "$runs"  # an unprivileged owner that is not the image's own user
  start=$(date +%s)
  podman_ run --rm --user 4242:4242 -v "$runs:/workspace/runs" "$IMAGE" \
    trainer.max_steps=5 trainer.val_every_steps=5 data.val_batches=2 checkpoint.every_n_steps=5 \
    trainer.progress_bar=false run.id=smoke
  test -f "$runs/gpt_tiny_cpu/smoke/checkpoints/step-00000005/manifest.json"
  echo "container: smoke test passed: 5 steps trained in $IMAGE as uid 4242 ($(( $(date +%s) - start )) s)" >&2
}

case "${1:-all}" in
  base) build_base ;;
  image) build_image ;;
  smoke) smoke ;;
  podman) shift; podman_ "$@" ;;
  all) build_image >/dev/null && smoke ;;
  *) echo "usage: scripts/container.sh [all|base|image|smoke|podman ARGS...]" >&2; exit 2 ;;
esac
