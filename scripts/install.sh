#!/usr/bin/env bash
# Install colm and its test dependencies. Sourced by demo.sh and test.sh (which then find `colm` and the
# right python3 on PATH); run it alone to set up a checkout by hand.
#
# Inside an active virtual environment (venv, virtualenv, conda) it installs there. Otherwise it creates
# and uses `.venv` in the repository: a stock Debian/Ubuntu python3 refuses pip installs into the system
# (PEP 668, externally-managed-environment), and a user's own Python should not be changed behind their back.
# torch is pinned to 2.13.0 so pip takes the CPU wheel; see README.md for a CUDA build.
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
python3 -m pip install --quiet --root-user-action=ignore torch==2.13.0 -e "$repo[test]"
