#!/usr/bin/env bash
# Install everything, then run the whole colm pipeline on the embedded default corpus
# (the running Python's standard-library sources): no download needed. A few minutes on 2 CPU cores.
#
#   init -> train -> expand -> train the new chains (chain 1 frozen) -> slice -> eval -> generate
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
work=${COLM_DEMO_DIR:-$(mktemp -d)}
mkdir -p "$work"
echo "checkpoints go to $work" >&2
steps=${COLM_DEMO_STEPS:-300}

# A 1-chain CoLM-Air model (the tiny preset's 2 query heads per chain), trained, then grown by two
# chains that are trained with chain 1 frozen, then cut back to its first two chains.
colm init --preset tiny --chains 1 --air -o "$work/base" \
  | colm train --steps "$steps" --seq-len 128 -o "$work/trained" \
  | colm expand --add-chains 2 -o "$work/grown" \
  | colm train --freeze-chains 1 --steps "$steps" --seq-len 128 -o "$work/tuned" \
  | colm slice --chains 2 -o "$work/sliced" \
  | colm eval --max-tokens 20000 --chains 1,2 > "$work/eval-sliced.json"

colm eval "$work/tuned" --max-tokens 20000 > "$work/eval-tuned.json"
colm generate "$work/tuned" --prompt "def main(" --max-new-tokens 80 --switch 0:3,40:1
echo "done: checkpoints and eval JSON in $work" >&2
