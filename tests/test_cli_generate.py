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
# Fast settings on tiny weights: few candidates, few diffusion steps, short generations.
FAST = ["--preset", "ultra_fast_v2", "--set", "num_autoregressive_samples=2", "--set", "diffusion_iterations=4",
        "--set", "max_mel_tokens=120", "--device", "cpu", "--precision", "fp32"]
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
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return {"root": root, "voice": voice, "env": env}


@pytest.fixture(scope="module")
def models(workspace):
    from tutortoietts.engine.checkpoints import write_random_checkpoints

    return write_random_checkpoints(workspace["root"] / "models", "tiny", seed=0)


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    print(result.returncode, result.stderr.strip())
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_user_mistakes_are_one_line(workspace, tmp_path):
    env, voice = workspace["env"], workspace["voice"]
    book = tmp_path / "book.md"
    book.write_text("# A\n\n## One\n\nHello there.\n")
    models = tmp_path / "models"
    models.mkdir()
    base = ["generate", book, "--voice", voice, "--models-dir", models, "--format", "wav", "--out", tmp_path / "o"]
    assert "manuscript not found" in one_error_line(cli("generate", tmp_path / "missing.md", "--voice", voice, env=env, check=False))
    assert "unknown voice 'emmma'" in one_error_line(cli(*base[:3], "emmma", *base[4:], env=env, check=False))
    assert "unknown preset" in one_error_line(cli(*base, "--preset", "ultra_fastest", env=env, check=False))
    assert "temperature" in one_error_line(cli(*base, "--set", "temperature=hot", env=env, check=False))
    assert "key=value" in one_error_line(cli(*base, "--set", "temperature", env=env, check=False))
    assert "unknown setting" in one_error_line(cli(*base, "--set", "temprature=0.5", env=env, check=False))
    assert "weights not found" in one_error_line(cli(*base, env=env, check=False))
    assert "--format" in one_error_line(cli(*base[:-4], "--format", "ogg", env=env, check=False))
    assert "--voice" in one_error_line(cli("generate", book, env=env, check=False))
