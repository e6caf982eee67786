"""Finding the ffmpeg and ffprobe programs, with the one line that says how to get them.

Its own module, below both stitch (which exports with them) and mastering (which probes and
decodes with them), so neither has to import the other to reach these.
"""

from __future__ import annotations

import shutil

from tutortoietts.errors import UserError

FFMPEG_MISSING = (
    "ffmpeg not found: install it (Debian/Ubuntu: sudo apt-get install ffmpeg; macOS: brew install ffmpeg), or use --format wav"
)


def require_ffprobe() -> str:
    path = shutil.which("ffprobe")
    if path is None:
        raise UserError(FFMPEG_MISSING.replace("ffmpeg not found", "ffprobe (part of ffmpeg) not found"))
    return path


def require_ffmpeg() -> str:
    """The ffmpeg program's path; without it there is no mp3 or m4b, so say how to get it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise UserError(FFMPEG_MISSING)
    return path
