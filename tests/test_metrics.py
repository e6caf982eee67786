"""Quality metrics on known cases: identical speech scores perfect, noise at falling SNR scores worse each step."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile

from tutortoietts.devtools import metrics

RATE = 24000
SNRS = (30, 20, 10, 0)  # dB, cleanest first


def espeak(text: str, path) -> np.ndarray:
    """Real speech from espeak-ng (.ci/run installs it), at the engine's 24 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install -y espeak-ng); the metric tests need real speech")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    wave, rate = soundfile.read(str(path))
    return metrics.resample(wave, rate, RATE)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return {
        "sentence": espeak("The pharmaceutical pseudoephedrine was kept on the lowest shelf of the old pharmacy.", folder / "a.wav"),
        "other": espeak("Oh my god! This is amazing, I never thought we would see the sea again.", folder / "b.wav"),
    }


def test_identical_speech_is_perfect(speech):
    wave = speech["sentence"]
    quality = metrics.compare(wave, wave.copy(), RATE)
    print(quality)
    assert quality.mcd == pytest.approx(0.0, abs=1e-9)
    assert quality.log_mel == pytest.approx(0.0, abs=1e-9)
    assert quality.pesq == pytest.approx(metrics.PESQ_MAX, abs=0.01)  # wide-band ceiling, 4.64
    assert quality.stoi == pytest.approx(1.0, abs=1e-6)
    assert quality.aligned and not quality.notes


def test_noise_makes_every_metric_worse_step_by_step(speech):
    wave = speech["sentence"]
    results = [metrics.compare(wave, metrics.add_noise(wave, snr, seed=snr), RATE) for snr in SNRS]
    for snr, quality in zip(SNRS, results):
        print(f"{snr:>3} dB: MCD {quality.mcd:.2f}  PESQ {quality.pesq:.2f}  STOI {quality.stoi:.3f}  log-mel {quality.log_mel:.3f}")
    mcd = [q.mcd for q in results]
    log_mel = [q.log_mel for q in results]
    pesq = [q.pesq for q in results]
    stoi = [q.stoi for q in results]
    assert all(a < b for a, b in zip(mcd, mcd[1:])), mcd
    assert all(a < b for a, b in zip(log_mel, log_mel[1:])), log_mel
    assert all(a > b for a, b in zip(pesq, pesq[1:])), pesq
    assert all(a > b for a, b in zip(stoi, stoi[1:])), stoi
    # Anchors that hold for any speech: 30 dB SNR is still good, 0 dB is poor by PESQ's scale.
    assert pesq[0] > 2.0 and pesq[-1] < 1.5
    assert stoi[0] > 0.95 and stoi[-1] < 0.95
    assert mcd[0] > 0.5  # noise is never free


def test_gain_changes_only_c0_so_mcd_ignores_it(speech):
    wave = speech["sentence"]
    quality = metrics.compare(wave, 0.5 * wave, RATE)
    assert quality.mcd == pytest.approx(0.0, abs=1e-9)
    assert quality.log_mel == pytest.approx(np.log(2.0), abs=1e-6)  # ln|X| moves by ln 2 in every bin


def test_different_lengths_are_aligned_by_dtw(speech):
    wave = speech["sentence"]
    # The same speech with a 0.4 s pause opened in the middle: DTW pairs the frames back up.
    middle = len(wave) // 2
    stretched = np.concatenate([wave[:middle], np.zeros(int(0.4 * RATE)), wave[middle:]])
    aligned = metrics.compare(wave, stretched, RATE)
    assert not aligned.aligned and aligned.notes
    # Frame by frame over the shorter length, the second half would be compared out of step.
    naive_ref = metrics.mel_cepstra(metrics.log_mel(metrics.mel_power(wave, RATE)))
    naive_test = metrics.mel_cepstra(metrics.log_mel(metrics.mel_power(stretched, RATE)))[: len(naive_ref)]
    naive = (metrics.MCD_SCALE * np.sqrt(((naive_ref - naive_test) ** 2).sum(axis=1))).mean()
    print(f"MCD with DTW {aligned.mcd:.3f}, frame by frame {naive:.3f}")
    assert aligned.mcd < 0.25 * naive
    # Different words stay far apart even after warping.
    other = metrics.compare(wave, speech["other"], RATE)
    assert other.mcd > 4 * aligned.mcd + 1.0


def test_silence_is_reported_not_scored():
    silence = np.zeros(RATE)
    quality = metrics.compare(silence + 1e-4 * np.sin(np.arange(RATE)), silence, RATE)
    assert quality.pesq is None or quality.stoi is None
    assert any("not computed" in note for note in quality.notes)


def test_empty_clip_is_an_error():
    with pytest.raises(ValueError):
        metrics.compare(np.zeros(0), np.zeros(10), RATE)
