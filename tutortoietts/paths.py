"""Where tutortoietts keeps its own files (one place, so every module agrees)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$TUTORTOIETTS_CACHE, else ~/.cache/tutortoietts: the disk cache and converted weight copies."""
    configured = os.environ.get("TUTORTOIETTS_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "tutortoietts"
