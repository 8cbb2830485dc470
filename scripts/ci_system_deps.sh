#!/usr/bin/env bash
# System packages the cluster tests need: SLURM + munge (scripts/slurm_cluster.sh), iproute2
# (scripts/netns_hosts.sh), podman + runc + mmdebstrap (scripts/container.sh). Idempotent: installs only
# what is missing, so a second run is instant.
# Needs root; the tests that need these skip, saying why, when they are absent.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "ci_system_deps: not root, nothing installed" >&2; exit 0; }
missing=()
for pair in slurmctld:slurm-wlm munged:munge ip:iproute2 podman:podman runc:runc mmdebstrap:mmdebstrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "ci_system_deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
