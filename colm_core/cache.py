"""Where colm keeps what it derives (token caches, imported Hugging Face models): never next to
the user's files. $COLM_CACHE_DIR, else $XDG_CACHE_HOME/colm, else ~/.cache/colm. Temporary files
there and beside outputs carry their writer's pid, so that the leftovers of a killed writer are
told from a live one's (process_alive)."""

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("COLM_CACHE_DIR"):
        return Path(os.environ["COLM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "colm"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
