"""End to end through the real CLI (subprocesses): tiny random weights, a tone voice, the example book."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_BOOK = ROOT / "examples" / "book.md"
# Fast settings on tiny weights: few candidates, few diffusion steps. max_mel_tokens stays at the
# preset's 500 so the book is chunked as in real use (chunk sizes follow the generation length).
FAST = ["--preset", "ultra_fast_v2", "--set", "num_autoregressive_samples=2", "--set", "diffusion_iterations=4",
        "--device", "cpu", "--precision", "fp32"]
STOP_TOKEN = 8193  # the autoregressive model's stop_mel_token (configs)
ffmpeg_missing = shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None


def cli(*args, env, cwd=None, check=True):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tutortoietts.cli", *map(str, args)], capture_output=True,
                            text=True, env=env, cwd=cwd or ROOT, timeout=300)
    result.seconds = time.perf_counter() - started
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    voice = root / "tone-voice"
    voice.mkdir()
    rate = 22050
    t = np.arange(rate * 2) / rate
    for i, freq in enumerate((180.0, 240.0)):
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(i).standard_normal(t.size)
        soundfile.write(voice / f"{i}.wav", wave.astype(np.float32), rate)
    env = {**os.environ, "TUTORTOIETTS_CACHE": str(root / "cache"), "TUTORTOIETTS_VOICES": str(root / "no-user-voices"),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    return {"root": root, "voice": voice, "env": env}


@pytest.fixture(scope="module")
def models(workspace):
    import torch

    from tutortoietts.engine.checkpoints import write_random_checkpoints

    folder = write_random_checkpoints(workspace["root"] / "models", "tiny", seed=0)
    # Random weights almost never emit the stop token, so every chunk would run to 500 codes
    # (20 s of noise each). A raised stop logit makes them "speak" short utterances of about
    # 10 codes, ending the way a trained model's do: the loop and the stages are unchanged.
    path = folder / "autoregressive.pth"
    state = torch.load(path, weights_only=True)
    state["mel_head.bias"][STOP_TOKEN] += 5.0
    torch.save(state, path)
    return folder


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    print(result.returncode, result.stderr.strip())
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def cli_in_process(*args, monkeypatch, capsys):
    """The console entry point in this process (same handler as the installed command, no start-up cost)."""
    from types import SimpleNamespace

    from tutortoietts import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["tutortoietts", *map(str, args)])
    capsys.readouterr()
    try:
        cli_module.main()
        code = 0
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


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


def ffprobe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def decoded_pcm(path):
    """The output's audio as ffmpeg decodes it: what a listener hears, byte for byte."""
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-"],
                          capture_output=True, check=True).stdout


def job_rows(job_dir):
    db = sqlite3.connect(job_dir / "job.sqlite")
    try:
        return db.execute("SELECT chapter, idx, status, attempts, checksum, duration, pause_after, audio_path"
                          " FROM chunks ORDER BY chapter, idx").fetchall()
    finally:
        db.close()


def chunk_pcm(job_dir):
    return {path.name: soundfile.read(path, dtype="float32")[0] for path in sorted((job_dir / "chunks").glob("*.wav"))}


def done_count(job_dir):
    try:
        db = sqlite3.connect(f"file:{job_dir / 'job.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM chunks WHERE status='done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


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

    # Second run: nothing rendered, nothing loaded, the same sound.
    pcm = decoded_pcm(m4b)
    first_stamps = {path.name: path.stat().st_mtime_ns for path in (out / "chunks").glob("*.wav")}
    second = cli("generate", book, "--out", out, *common, env=env)
    print(f"re-run {second.seconds:.1f} s")
    print(second.stderr[-1500:])
    assert job_rows(out) == rows and decoded_pcm(m4b) == pcm  # attempts still 1: nothing rendered
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

    # The cache saw it all: the kill run's cache stats, as the command prints them.
    stats = cli("cache", "stats", env=kill_env)
    print(stats.stdout)
    jobs = cli("jobs", tmp_path, env=env)
    print(jobs.stdout)
    assert "book-job" in jobs.stdout and "resumed-job" in jobs.stdout
