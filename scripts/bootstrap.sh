#!/usr/bin/env bash
# Create ./.venv and install the project into it (editable) from the pinned dependency set
# requirements/constraints.txt. Re-running is a no-op (a few ms) until pyproject.toml, the constraints,
# this script or TORCH_BUILD change, or an extra not yet installed is asked for.
#
#   scripts/bootstrap.sh                   # the core: trains the default run (scripts/train.sh)
#   scripts/bootstrap.sh all               # every extra in pyproject.toml (scripts/test.sh)
#   scripts/bootstrap.sh deepspeed,report  # the core plus these extras
#
# TORCH_BUILD picks the torch build: default | cpu | cu126 | cu128 | cu130 ... (scripts/torch_build.sh).
# A plain install on Linux x86_64 (TORCH_BUILD=default) pulls PyPI's multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/torch_build.sh
. scripts/torch_build.sh
PY=${PYTHON:-python3}
VENV=${TRAINER_VENV:-.venv}
CONSTRAINTS=requirements/constraints.txt
index_args=$(torch_index_args) || exit 2

wanted=${1:-}
if [ "$wanted" = all ]; then
  wanted=$("$PY" -c 'import tomllib; print(",".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]))')
fi
key=$(cat pyproject.toml setup.py "$CONSTRAINTS" scripts/bootstrap.sh scripts/torch_build.sh | sha256sum | cut -c1-16)
stamp="$VENV/.installed-$key-${TORCH_BUILD:-default}"  # holds the extras installed, one per line

have_all() {
  [ -f "$stamp" ] || return 1
  local extra
  for extra in ${wanted//,/ }; do grep -qx "$extra" "$stamp" || return 1; done
}
if have_all; then exit 0; fi

echo "bootstrap: installing into $VENV${wanted:+ with extras $wanted} (first run only)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip wheel setuptools
# torch first and on its own: only this step looks at the index TORCH_BUILD names.
# shellcheck disable=SC2086
"${pip[@]}" install -q -c "$CONSTRAINTS" $index_args torch
"${pip[@]}" install -q -c "$CONSTRAINTS" -e ".${wanted:+[$wanted]}"

previous=$(cat "$stamp" 2>/dev/null || true)
rm -f "$VENV"/.installed-*
printf '%s\n' $previous ${wanted//,/ } | sort -u > "$stamp"
