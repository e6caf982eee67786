"""Subtitles: each chunk's text timed to its audio, as SubRip (.srt) or WebVTT (.vtt)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tutortoietts.errors import UserError

KINDS = ("srt", "vtt")


@dataclass(frozen=True)
class Cue:
    start: float  # seconds from the start of its file
    end: float
    text: str


def check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown --subtitles {kind!r}: use srt or vtt")
    return kind


def timestamp(seconds: float, kind: str) -> str:
    """"00:01:02,345" (srt) or "00:01:02.345" (vtt), to the millisecond."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    separator = "," if kind == "srt" else "."
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render(cues: list[Cue], kind: str) -> str:
    blocks = ["WEBVTT\n"] if kind == "vtt" else []
    for number, cue in enumerate(cues, start=1):
        # A blank line ends a cue in both formats, and "-->" would read as timing in WebVTT.
        text = " ".join(cue.text.split()).replace("-->", "->")
        times = f"{timestamp(cue.start, kind)} --> {timestamp(cue.end, kind)}"
        blocks.append(f"{number}\n{times}\n{text}\n" if kind == "srt" else f"{times}\n{text}\n")
    return "\n".join(blocks)


def shifted(cues: list[Cue], offset: float) -> list[Cue]:
    return [Cue(cue.start + offset, cue.end + offset, cue.text) for cue in cues]


def write_subtitles(path: Path, cues: list[Cue], kind: str) -> Path:
    """Written under a temporary name and renamed, like the audio."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    temporary.write_text(render(cues, kind), encoding="utf-8")
    os.replace(temporary, path)
    return path
