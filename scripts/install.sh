#!/usr/bin/env bash
# Install colm and its test dependencies. Sourced by demo.sh and test.sh (which then find `colm` and the
# right python3 on PATH); run it alone to set up a checkout by hand.
#
# Inside an active virtual environment (venv, virtualenv, conda) it installs there. Otherwise it creates
# and uses `.venv` in the repository: a stock Debian/Ubuntu python3 refuses pip installs into the system
# (PEP 668, externally-managed-environment), and a user's own Python should not be changed behind their back.
# torch is pinned to 2.13.0 so pip takes the CPU wheel; see README.md for a CUDA build.
#
# The test tools (transformers, lm-eval, peft, hypothesis, ...) and everything they pull in are installed
# at the versions in scripts/test-constraints.txt, which the suite passed with, so that a new release
# cannot break a checkout overnight. COLM_NEWEST=1 ignores that file and upgrades to the newest
# releases instead: how to try them on purpose before updating it. colm's own dependencies stay ranges.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && python3 -c 'import sys; sys.exit(sys.prefix != sys.base_prefix)'; then
  if [ ! -x "$repo/.venv/bin/python3" ]; then
    echo "colm: no virtual environment is active: creating one in $repo/.venv" >&2
    python3 -m venv "$repo/.venv" || {
      echo "colm: error: could not create $repo/.venv; on Debian/Ubuntu run 'sudo apt install python3-venv', or activate an environment first" >&2
      exit 1
    }
  fi
  echo "colm: installing into $repo/.venv (use it afterwards with: source .venv/bin/activate)" >&2
  export VIRTUAL_ENV="$repo/.venv"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
if [ -n "${COLM_NEWEST:-}" ]; then
  echo "colm: COLM_NEWEST is set: installing the newest releases, not scripts/test-constraints.txt" >&2
  versions=(--upgrade --upgrade-strategy eager)
else
  versions=(--constraint "$repo/scripts/test-constraints.txt")
fi
python3 -m pip install --quiet --root-user-action=ignore torch==2.13.0 -e "$repo[test]" "${versions[@]}"
