"""Shared test setup: the reference package importable without torchaudio, tiny checkpoints on demand."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import settings as hypothesis_settings

from tests.cli_support import ROOT, STOP_TOKEN
from tutortoietts.devtools.reference_runner import install_torchaudio_stand_in

# Property tests draw the same examples on every run by default, so CI cannot fail on a case
# the previous run never tried; TUTORTOIETTS_FUZZ_RANDOM=1 draws fresh ones (with
# TUTORTOIETTS_FUZZ_SCALE=20 for a long hunt), and hypothesis then keeps any failure it finds.
hypothesis_settings.register_profile("fixed", derandomize=True)
hypothesis_settings.register_profile("random", derandomize=False)
hypothesis_settings.load_profile("random" if os.environ.get("TUTORTOIETTS_FUZZ_RANDOM") else "fixed")

# The reference's model modules import torchaudio, which cannot load beside the CPU build of
# torch; their forward passes never use it, so a stand-in module lets them import.
install_torchaudio_stand_in()

# Tiny networks are dominated by per-op overhead, where a second thread only adds spin-waiting
# (up to 16x slower on a busy 2-core machine). Full-size tests that want more set it themselves.
torch.set_num_threads(int(os.environ.get("TUTORTOIETTS_TEST_THREADS", "1")))


def max_diff(ours, theirs) -> float:
    """Largest absolute difference, printed so every parity test shows what it saw."""
    return (ours.double() - theirs.double()).abs().max().item()


def report(name: str, ours, theirs) -> tuple[float, float]:
    """Print and return (max abs diff, scale of the reference output)."""
    diff = max_diff(ours, theirs)
    scale = theirs.double().abs().max().item()
    print(f"[parity] {name}: max|diff| = {diff:.3e}  (output scale {scale:.3e}, relative {diff / max(scale, 1e-12):.3e})")
    return diff, scale


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """A complete random-weight checkpoint set in the official file format, tiny config."""
    from tutortoietts.engine.checkpoints import write_random_checkpoints

    directory = tmp_path_factory.mktemp("tiny-models")
    write_random_checkpoints(directory, "tiny", seed=0)
    return directory


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Keep the disk cache and converted weight copies of a test run out of the user's home."""
    previous = os.environ.get("TUTORTOIETTS_CACHE")
    os.environ["TUTORTOIETTS_CACHE"] = str(tmp_path_factory.mktemp("tutortoietts-cache"))
    yield
    if previous is None:
        os.environ.pop("TUTORTOIETTS_CACHE", None)
    else:
        os.environ["TUTORTOIETTS_CACHE"] = previous


# ---------------------------------------------------------------- end to end through the CLI


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tone voice (two clips), an isolated cache and voices folder, and the environment for CLI subprocesses."""
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
    """Tiny random checkpoints whose autoregressive model stops early (see below)."""
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
