#!/usr/bin/env bash
# Install colm and its test dependencies into the current Python.
# torch is pinned to 2.13.0 so pip takes the CPU wheel; see README.md for a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --root-user-action=ignore torch==2.13.0 -e '.[test]'
