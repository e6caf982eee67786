"""What the end-to-end tests share: running the real CLI, reading a job folder and its audio."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

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
