"""Subtitles: chunk text timed exactly to where stitch placed each chunk, per chapter and for the book."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tests.cli_support import ffmpeg_missing
from tutortoietts.errors import UserError
from tutortoietts.stitch import PAUSE_SECONDS, Segment, assemble_timed, export_book
from tutortoietts.subtitles import Cue, check_kind, render, timestamp

RATE = 24000


def clip(path, seconds, frequency=220.0):
    t = np.arange(int(seconds * RATE)) / RATE
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), RATE, subtype="FLOAT")
    return path


def test_formats():
    assert timestamp(3725.0456, "srt") == "01:02:05,046" and timestamp(0.5, "vtt") == "00:00:00.500"
    cues = [Cue(1.0, 2.5, "Hello there."), Cue(3.0, 4.0, "A --> B\n\nsplit")]
    assert render(cues, "srt") == "1\n00:00:01,000 --> 00:00:02,500\nHello there.\n\n2\n00:00:03,000 --> 00:00:04,000\nA -> B split\n"
    assert render(cues, "vtt").startswith("WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nHello there.\n")
    with pytest.raises(UserError, match="unknown --subtitles 'ass'"):
        check_kind("ass")


def test_cues_sit_exactly_on_the_clips(tmp_path):
    """Each cue starts where its clip's first sample is and ends with its last one."""
    segments = [Segment(clip(tmp_path / "a.wav", 1.0), "sentence", "First."),
                Segment(clip(tmp_path / "b.wav", 0.5, 330), "paragraph", "Second."),
                Segment(clip(tmp_path / "c.wav", 0.25, 440), "chapter", "Third.")]
    samples, cues = assemble_timed(segments, RATE, head=0.75, tail=3.0)
    starts = [0.75, 0.75 + 1.0 + PAUSE_SECONDS["sentence"], 0.75 + 1.5 + PAUSE_SECONDS["sentence"] + PAUSE_SECONDS["paragraph"]]
    assert [cue.text for cue in cues] == ["First.", "Second.", "Third."]
    assert np.allclose([cue.start for cue in cues], starts, atol=1 / RATE)
    assert np.allclose([cue.end - cue.start for cue in cues], [1.0, 0.5, 0.25], atol=1 / RATE)
    assert abs(len(samples) / RATE - (cues[-1].end + 3.0)) < 1 / RATE
    for cue in cues:  # sound inside every cue, silence in the gaps
        assert np.abs(samples[round(cue.start * RATE) + 10 : round(cue.end * RATE) - 10]).max() > 0.1
    assert np.abs(samples[round(cues[0].end * RATE) + 2 : round(cues[1].start * RATE) - 2]).max() == 0.0


@pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")
def test_book_subtitles_are_offset_by_the_chapters_before(tmp_path):
    chapters = [("One", np.zeros(2 * RATE, np.float32)), ("Two", np.zeros(RATE, np.float32))]
    cues = [[Cue(0.5, 1.0, "one a"), Cue(1.2, 1.5, "one b")], [Cue(0.25, 0.75, "two a")]]
    result = export_book(chapters, tmp_path, "wav", "Book", None, cues=cues, subtitles="srt")
    book_srt = (tmp_path / "Book.srt").read_text()
    assert "00:00:02,250 --> 00:00:02,750\ntwo a" in book_srt
    assert (tmp_path / "chapters" / "02 - Two.srt").read_text() == "1\n00:00:00,250 --> 00:00:00,750\ntwo a\n"
    assert [p.name for p in result.subtitle_paths] == ["Book.srt", "01 - One.srt", "02 - Two.srt"]
