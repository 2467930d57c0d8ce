#!/usr/bin/env bash
# Install everything, then run the whole colm pipeline on the embedded default corpus
# (the running Python's standard-library sources): no download needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
work=$(mktemp -d)
echo "working in $work" >&2
colm init --preset tiny -o "$work/base" \
  | colm eval --max-tokens 20000
