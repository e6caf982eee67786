"""End to end through the real CLI (subprocesses): tiny random weights, a tone voice, the example book."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_support import (
    EXAMPLE_BOOK,
    FAST,
    ROOT,
    chunk_pcm,
    cli,
    cli_in_process,
    decoded_pcm,
    done_count,
    ffmpeg_missing,
    ffprobe,
    job_rows,
    one_error_line,
)


def cache_counts(env) -> dict:
    """entries, hits and misses per cache namespace, read from the cache folder a run used."""
    from tutortoietts.cache import Cache

    with Cache(env["TUTORTOIETTS_CACHE"]) as cache:
        stats = cache.stats()["namespaces"]
    return {name: {key: row[key] for key in ("entries", "hits", "misses")} for name, row in stats.items()}


def job_takes(job_dir) -> list[tuple[str, str]]:
    """(take_key, source) of every take the job recorded: what its runs rendered or found cached."""
    db = sqlite3.connect(job_dir / "job.sqlite")
    try:
        return db.execute("SELECT take_key, source FROM takes ORDER BY cache_key, attempt").fetchall()
    finally:
        db.close()


def assert_cache_counts_match_fresh_run(stats: dict, takes: list) -> None:
    """A run on an empty cache: each take looked its audio up once (found only when an earlier take of
    the run had the same key), and every rendered take's audio and codes were stored; the voice was
    computed once."""
    cached = sum(source == "audio-cache" for _, source in takes)
    rendered = [key for key, source in takes if source != "audio-cache"]
    assert takes and cached == 0, takes  # the example book says nothing twice
    assert stats["audio"] == {"entries": len(set(rendered)), "hits": cached, "misses": len(rendered)}
    assert stats["ar"]["entries"] == len(rendered) and stats["ar"]["hits"] == 0
    assert stats["ar"]["misses"] == len(takes)  # a fresh cache has no codes: every take's lookup missed
    assert stats["voice"] == {"entries": 1, "hits": 0, "misses": 1}


def assert_cache_counts_match_the_kill(stats: dict, chunks: int, done: int) -> None:
    """A run on an empty cache killed with `done` chunks finished: it looked up at least those and at most
    every chunk's audio (all misses), stored theirs and perhaps the one in flight, and computed the voice."""
    audio = stats["audio"]
    assert audio["hits"] == 0 and done <= audio["misses"] <= chunks, audio
    assert audio["entries"] in (done, done + 1), audio
    assert stats["ar"]["hits"] == 0 and stats["ar"]["entries"] in (done, done + 1), stats["ar"]
    assert stats["voice"] == {"entries": 1, "hits": 0, "misses": 1}


def assert_cache_counts_match_the_resume(before: dict, after: dict, chunks: int, done: int) -> None:
    """The resume of that job on the same cache: one audio lookup per chunk still pending, found exactly
    for the chunk whose audio the killed run stored without finishing it; every chunk's audio stored."""
    pending = chunks - done
    stored_unfinished = before["audio"]["entries"] - done  # 0 or 1
    hits = after["audio"]["hits"] - before["audio"]["hits"]
    misses = after["audio"]["misses"] - before["audio"]["misses"]
    assert (hits, misses) == (stored_unfinished, pending - stored_unfinished), (before["audio"], after["audio"])
    assert after["audio"]["entries"] == after["ar"]["entries"] == chunks
    # The voice is read back from the cache when the resume has anything left to render.
    assert after["voice"] == {"entries": 1, "hits": int(pending > stored_unfinished), "misses": 1}


def test_user_mistakes_are_one_line(workspace, tmp_path, monkeypatch, capsys):
    env, voice = workspace["env"], workspace["voice"]
    for key in ("TUTORTOIETTS_CACHE", "TUTORTOIETTS_VOICES"):
        monkeypatch.setenv(key, env[key])
    book = tmp_path / "book.md"
    book.write_text("# A\n\n## One\n\nHello there.\n")
    models = tmp_path / "models"
    models.mkdir()
    base = ["generate", book, "--voice", voice, "--models-dir", models, "--format", "wav", "--out", tmp_path / "o"]

    def run(*args):
        line = one_error_line(cli_in_process(*args, monkeypatch=monkeypatch, capsys=capsys))
        with capsys.disabled():
            print(f"[exit 1] {line}")
        return line

    assert "manuscript not found" in run("generate", tmp_path / "missing.md", "--voice", voice)
    assert "unknown voice 'emmma'" in run(*base[:3], "emmma", *base[4:])
    assert "unknown preset" in run(*base, "--preset", "ultra_fastest")
    assert "temperature" in run(*base, "--set", "temperature=hot")
    assert "key=value" in run(*base, "--set", "temperature")
    assert "unknown setting" in run(*base, "--set", "temprature=0.5")
    assert "--format" in run(*base[:-4], "--format", "ogg")
    assert "--voice" in run("generate", book)
    # One through a real process: the exit code and stderr a shell sees.
    assert "weights not found" in one_error_line(cli(*base, env=env, check=False))


@pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")
def test_book_to_m4b_rerun_and_resume(workspace, models, tmp_path):
    from tutortoietts.manuscript import read_book
    from tutortoietts.stitch import PAUSE_SECONDS, SAMPLE_RATE, read_clip, trim_silence

    env, voice = workspace["env"], workspace["voice"]
    book = EXAMPLE_BOOK
    common = ["--voice", voice, "--models-dir", models, *FAST, "--seed", "3"]
    out = tmp_path / "book-job"

    first = cli("generate", book, "--out", out, *common, env=env)
    outputs = first.stdout.strip().splitlines()
    assert len(outputs) == 1 and outputs[0].endswith(".m4b"), first.stdout
    m4b = Path(outputs[0])
    rows = job_rows(out)
    print(f"first run {first.seconds:.1f} s, {len(rows)} chunks")
    print(first.stderr[-1500:])
    assert rows and all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows)

    # Chapters: count and titles as the manuscript has them.
    probe = ffprobe(m4b)
    expected_titles = [chapter.title for chapter in read_book(book).chapters]
    titles = [chapter["tags"]["title"] for chapter in probe["chapters"]]
    assert titles == expected_titles
    # Duration: every chunk (less the edge silence stitch trims) plus the pause after it; a
    # chapter's last chunk says "chapter", split between the chapter's end and the next one's start.
    spoken = sum(len(trim_silence(read_clip(out / path, SAMPLE_RATE), SAMPLE_RATE)) / SAMPLE_RATE for *_, path in rows)
    pauses = sum(PAUSE_SECONDS[pause] for *_, pause, _ in rows)
    expected = spoken + pauses
    duration = float(probe["format"]["duration"])
    untrimmed = sum(row[5] for row in rows)
    print(f"m4b duration {duration:.3f} s; chunks {spoken:.3f} s (untrimmed {untrimmed:.3f}) + pauses {pauses:.3f} s = {expected:.3f} s")
    assert abs(duration - expected) < 0.1

    # The cache saw exactly what the first run did: one lookup per take, one entry per rendered take.
    first_stats = cache_counts(env)
    takes = job_takes(out)
    print(f"first run: {len(takes)} takes; cache {first_stats}")
    assert_cache_counts_match_fresh_run(first_stats, takes)

    # Second run: nothing rendered, nothing loaded, the same sound.
    pcm = decoded_pcm(m4b)
    first_stamps = {path.name: path.stat().st_mtime_ns for path in (out / "chunks").glob("*.wav")}
    second = cli("generate", book, "--out", out, *common, env=env)
    print(f"re-run {second.seconds:.1f} s")
    print(second.stderr[-1500:])
    assert job_rows(out) == rows and decoded_pcm(m4b) == pcm  # attempts still 1: nothing rendered
    assert cache_counts(env) == first_stats  # not even a cache lookup: every chunk was done in the job
    assert {path.name: path.stat().st_mtime_ns for path in (out / "chunks").glob("*.wav")} == first_stamps

    # Kill a fresh job (own cache, so nothing comes from the first run) after 2 chunks, then resume.
    resumed = tmp_path / "resumed-job"
    kill_env = {**env, "TUTORTOIETTS_CACHE": str(tmp_path / "kill-cache")}
    process = subprocess.Popen([sys.executable, "-m", "tutortoietts.cli", "generate", str(book), "--out", str(resumed),
                                *map(str, common), "--quiet"], env=kill_env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while done_count(resumed) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = [row for row in job_rows(resumed) if row[2] == "done"]
    stamps = {path.name: path.stat().st_mtime_ns for path in (resumed / "chunks").glob("*.wav")}
    print(f"killed with {len(before)} of {len(rows)} chunks done")
    assert 2 <= len(before) < len(rows)
    after_kill = cache_counts(kill_env)
    print(f"cache after the kill: {after_kill}")
    assert_cache_counts_match_the_kill(after_kill, chunks=len(rows), done=len(before))
    third = cli("generate", book, "--out", resumed, *common, env=kill_env)
    print(f"resume {third.seconds:.1f} s")
    after = job_rows(resumed)
    assert all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in after)
    # Chunks finished before the kill were not rendered or written again.
    for name, stamp in stamps.items():
        assert (resumed / "chunks" / name).stat().st_mtime_ns == stamp, name
    # Resumed == uninterrupted, chunk by chunk and in the final file.
    reference, got = chunk_pcm(out), chunk_pcm(resumed)
    assert reference.keys() == got.keys()
    worst = max(float(np.abs(reference[k] - got[k]).max()) for k in reference)
    print(f"resumed vs uninterrupted chunks: max|diff| = {worst:.3e}")
    assert worst == 0.0
    assert decoded_pcm(next(resumed.glob("*.m4b"))) == pcm

    # The resume's lookups, from the state the kill left; `cache stats` prints the same numbers.
    stats = cli("cache", "stats", env=kill_env)
    print(stats.stdout)
    after_resume = cache_counts(kill_env)
    print(f"cache after the resume: {after_resume}")
    assert_cache_counts_match_the_resume(after_kill, after_resume, chunks=len(rows), done=len(before))
    for namespace, row in after_resume.items():
        assert re.search(rf"\b{namespace}\b\W+{row['entries']}\W+{row['hits']}\W+{row['misses']}\b", stats.stdout), namespace
    jobs = cli("jobs", tmp_path, env=env)
    print(jobs.stdout)
    assert "book-job" in jobs.stdout and "resumed-job" in jobs.stdout
