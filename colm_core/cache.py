"""Where colm keeps what it derives (token caches, imported Hugging Face models): never next to
the user's files. $COLM_CACHE_DIR, else $XDG_CACHE_HOME/colm, else ~/.cache/colm."""

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("COLM_CACHE_DIR"):
        return Path(os.environ["COLM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "colm"
