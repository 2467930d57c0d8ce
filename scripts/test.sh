#!/usr/bin/env bash
# Install everything, then run the whole test suite (Triton kernels under the interpreter: no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
export TRITON_INTERPRET=1
python3 -m pytest -q "$@"
