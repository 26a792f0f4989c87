#!/usr/bin/env bash
# Install diffctl with its simulators. Installs a CPU build of PyTorch first when none is present, so that
# the `torch>=2.4` range does not pull a multi-GB CUDA build. Usage: scripts/install.sh [EXTRA,...]
# (e.g. `scripts/install.sh dev` for the test tools). Set DIFFCTL_TORCH to choose another torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="sim${1:+,$1}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "${DIFFCTL_TORCH:-torch==2.13.0}"
fi
"$PY" -m pip install --quiet -e ".[${extras}]"
