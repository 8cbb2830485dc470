#!/usr/bin/env bash
# Create ./.venv and install the project into it, once. Re-running is a no-op (a few ms) until
# pyproject.toml or this script changes. torch is pinned here: a bare `torch` requirement pulls a
# multi-GB CUDA build onto CPU machines. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=${TRAINER_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${TRAINER_EXTRAS:-dev}  # comma-separated pyproject extras; scripts/test.sh adds eval (lm-evaluation-harness)
base="$VENV/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
# Done if a stamp of this pyproject/script lists every extra asked for (test.sh's dev,eval covers train.sh's dev).
for done in "$base".*; do
  [ -f "$done" ] || continue
  have=",${done##*.},"
  missing=0
  for e in ${EXTRAS//,/ }; do [[ "$have" == *",$e,"* ]] || missing=1; done
  [ "$missing" = 0 ] && exit 0
done
echo "bootstrap: installing into $VENV (first run only)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
find "$VENV" -maxdepth 1 -name '.installed-*' ! -name "${base##*/}.*" -delete
touch "$base.$EXTRAS"
