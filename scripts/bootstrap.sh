#!/usr/bin/env bash
# Create ./.venv and install the project into it, once. Re-running is a no-op (a few ms) until
# pyproject.toml or this script changes. torch is pinned here: a bare `torch` requirement pulls a
# multi-GB CUDA build onto CPU machines. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=${TRAINER_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "bootstrap: installing into $VENV (first run only)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
rm -f "$VENV"/.installed-*
touch "$stamp"
