"""Stitching: pauses and click-free joins, whole-book loudness, ffmpeg export checked with ffprobe."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tutortoietts.errors import UserError
from tutortoietts.stitch import (
    FFMPEG_MISSING,
    PAUSE_SECONDS,
    PEAK_CEILING_DBFS,
    Segment,
    assemble_chapter,
    export_book,
    loudness,
    normalise_loudness,
    require_ffmpeg,
)

RATE = 24000
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffmpeg/ffprobe not installed")


def write_clip(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(str(path), samples.astype(np.float32), RATE, subtype="FLOAT")
    return path


def tone(seconds: float, frequency: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_pauses_between_segments(tmp_path):
    clips = [np.full(RATE // 2, 0.5, dtype=np.float32) for _ in range(3)]
    segments = [Segment(write_clip(tmp_path / f"{i}.wav", c), pause) for i, (c, pause) in
                enumerate(zip(clips, ["sentence", "paragraph", "chapter"]))]
    chapter = assemble_chapter(segments)
    expected = RATE * (PAUSE_SECONDS["chapter"] + PAUSE_SECONDS["sentence"] + PAUSE_SECONDS["paragraph"] + 1.5)
    assert abs(len(chapter) - expected) <= 3, (len(chapter), expected)
    # Runs of exact silence: the half-chapter lead-in, two pauses, the half-chapter tail.
    silent = np.concatenate([[False], chapter == 0, [False]])
    edges = np.flatnonzero(np.diff(silent.astype(int)))
    runs = [(end - start) / RATE for start, end in zip(edges[::2], edges[1::2])]
    long_runs = [round(float(r), 2) for r in runs if r > 0.1]
    print(f"[stitch] silent runs (s): {long_runs}")
    assert long_runs == [1.0, 0.35, 0.8, 1.0]


@pytest.mark.parametrize("signal", ["constant", "sine"])
def test_fades_make_joins_continuous(tmp_path, signal):
    clip = np.full(RATE, 0.5, dtype=np.float32) if signal == "constant" else tone(1.0, 440.0, 0.5)
    segments = [Segment(write_clip(tmp_path / f"{i}.wav", clip), "sentence") for i in range(4)]
    chapter = assemble_chapter(segments)
    jumps = np.abs(np.diff(chapter))
    natural = np.abs(np.diff(clip)).max()  # the largest step the signal itself makes
    print(f"[stitch] {signal}: max sample jump {jumps.max():.4f}, signal's own max step {natural:.4f}")
    # Without fades a constant 0.5 would jump by 0.5 at each join.
    assert jumps.max() <= natural + 0.5 * np.pi / (2 * 240) + 1e-4


def test_silence_around_a_clip_is_trimmed(tmp_path):
    clip = np.concatenate([np.zeros(RATE), tone(0.5), np.zeros(RATE)])
    chapter = assemble_chapter([Segment(write_clip(tmp_path / "a.wav", clip), "paragraph")])
    audible = len(chapter) / RATE - PAUSE_SECONDS["chapter"]
    print(f"[stitch] 0.5 s of tone inside 2 s of silence -> {audible:.3f} s kept")
    assert 0.5 <= audible <= 0.6


def test_loudness_targets_and_peak_limit():
    rng = np.random.default_rng(0)
    speech_like = [tone(3.0, 200.0, 0.02) * (1 + 0.5 * rng.standard_normal(3 * RATE)).astype(np.float32), tone(2.0, 300.0, 0.01)]
    out = normalise_loudness(speech_like)
    rms_db, peak_db = loudness(out)
    before = loudness(speech_like)
    print(f"[stitch] loudness before rms {before[0]:.2f} / peak {before[1]:.2f} dBFS, after rms {rms_db:.2f} / peak {peak_db:.2f} dBFS")
    assert -23.0 <= rms_db <= -18.0 and abs(rms_db + 20.0) < 0.05
    assert peak_db <= PEAK_CEILING_DBFS + 1e-3
    # One gain for the whole book: the chapters keep their relative level.
    ratio_before = np.sqrt(np.mean(speech_like[0] ** 2) / np.mean(speech_like[1] ** 2))
    ratio_after = np.sqrt(np.mean(out[0] ** 2) / np.mean(out[1] ** 2))
    assert abs(ratio_before - ratio_after) < 1e-3

    peaky = [np.concatenate([np.zeros(RATE), [0.9], np.zeros(RATE)]).astype(np.float32) + tone(2.0 + 1 / RATE, 200.0, 0.001)]
    rms_db, peak_db = loudness(normalise_loudness(peaky))
    print(f"[stitch] peaky input: rms {rms_db:.2f} dBFS, peak {peak_db:.2f} dBFS (limited by gain, not clipped)")
    assert abs(peak_db - PEAK_CEILING_DBFS) < 0.01 and rms_db < -23.0

    silent = normalise_loudness([np.zeros(100, dtype=np.float32)])
    assert not silent[0].any()


def ffprobe(path: Path) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-of", "json", str(path)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@needs_ffmpeg
@pytest.mark.parametrize("fmt", ["m4b", "mp3", "wav"])
def test_export_chapters_titles_and_durations(tmp_path, fmt):
    chapters = [("Chapter 1: The Letter", tone(2.0)), ("Chapter 2", tone(1.5, 330.0)), ("Epilogue", tone(1.0, 440.0))]
    result = export_book(chapters, tmp_path, fmt, title="The Lamplighter\u2019s Errand", author="A. Writer")
    info = ffprobe(result.book_path)
    duration = float(info["format"]["duration"])
    print(f"[stitch] {fmt}: book {result.book_path.name} {duration:.3f} s (expected 4.5), "
          f"chapters {[(c['tags']['title'], c['start_time'], c['end_time']) for c in info['chapters']]}")
    assert result.book_path == tmp_path / f"The Lamplighter\u2019s Errand.{fmt}"
    assert abs(duration - 4.5) < 0.1
    assert result.durations == [2.0, 1.5, 1.0]
    assert [p.name for p in result.chapter_paths] == [
        f"01 - Chapter 1 - The Letter.{'m4a' if fmt == 'm4b' else fmt}",
        f"02 - Chapter 2.{'m4a' if fmt == 'm4b' else fmt}",
        f"03 - Epilogue.{'m4a' if fmt == 'm4b' else fmt}",
    ]
    for path, expected in zip(result.chapter_paths, result.durations):
        assert abs(float(ffprobe(path)["format"]["duration"]) - expected) < 0.1
    tags = {key.lower(): value for key, value in info["format"].get("tags", {}).items()}
    assert tags.get("title") == "The Lamplighter\u2019s Errand" and tags.get("artist") == "A. Writer"
    if fmt == "wav":
        assert info["chapters"] == []
    else:
        assert tags.get("album") == "The Lamplighter\u2019s Errand"
        assert [c["tags"]["title"] for c in info["chapters"]] == ["Chapter 1: The Letter", "Chapter 2", "Epilogue"]
        starts = [float(c["start_time"]) for c in info["chapters"]]
        ends = [float(c["end_time"]) for c in info["chapters"]]
        assert np.allclose(starts, [0.0, 2.0, 3.5], atol=0.01) and np.allclose(ends, [2.0, 3.5, 4.5], atol=0.01)
    if fmt == "m4b":
        assert info["format"]["tags"]["major_brand"].strip() == "M4B"
    # Nothing half-written is left behind under a temporary name.
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]


def test_missing_ffmpeg_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as error:
        require_ffmpeg()
    assert str(error.value) == FFMPEG_MISSING
    with pytest.raises(UserError, match="ffmpeg not found"):
        export_book([("One", tone(0.5))], tmp_path / "out", "m4b", title="Book", author=None)
    # WAV needs no ffmpeg.
    result = export_book([("One", tone(0.5))], tmp_path / "out", "wav", title="Book", author=None)
    assert result.book_path.exists() and result.chapter_paths[0].exists()


def test_unknown_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown audio format 'ogg'"):
        export_book([("One", tone(0.5))], tmp_path, "ogg", title="Book", author=None)
