"""Mastering profiles: data from masters.toml (and the user's), the limiter, gate and room tone, and
finished files measured the way `check` measures them."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tests.cli_support import ffmpeg_missing
from tutortoietts.errors import UserError
from tutortoietts.mastering import (
    apply_rules,
    gate,
    limit_true_peak,
    load_profile,
    master_file,
    measure_file,
    noise_floor_db,
    profile_names,
    rms_db,
    speech_edges,
    true_peak_db,
)

RATE = 24000


def speech_like(seconds: float, seed: int = 0, frequency: float = 170.0) -> np.ndarray:
    """Syllable-rate bursts of a voiced tone with a little hiss: peaky, with quiet gaps, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    voiced = 0.5 * np.sin(2 * np.pi * frequency * t) + 0.25 * np.sign(np.sin(2 * np.pi * 3.1 * frequency * t))
    return (envelope * voiced + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def test_builtin_profiles_and_user_profiles(tmp_path, monkeypatch):
    monkeypatch.delenv("TUTORTOIETTS_MASTERS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    assert profile_names() == ["default", "acx", "podcast"]
    acx = load_profile("acx")
    assert (acx.format, acx.sample_rate, acx.bitrate, acx.bitrate_mode, acx.book_file) == ("mp3", 44100, "192k", "cbr", False)
    assert acx.rules["rms_db"] == [-23.0, -18.0] and acx.rules["head_seconds"] == [0.5, 1.0]
    with pytest.raises(UserError, match="unknown mastering profile 'acxx': did you mean acx"):
        load_profile("acxx")
    user = tmp_path / "masters.toml"
    user.write_text('[louder-acx]\nbase = "acx"\ntarget = -19.0\n[louder-acx.rules]\nrms_db = [-20.0, -18.0]\n')
    monkeypatch.setenv("TUTORTOIETTS_MASTERS", str(user))
    mine = load_profile("louder-acx")
    assert (mine.target, mine.sample_rate, mine.rules["rms_db"], mine.rules["peak_max_db"]) == (-19.0, 44100, [-20.0, -18.0], -3.0)
    user.write_text('[bad]\nbase = "acx"\nloudness = 3\n')
    with pytest.raises(UserError, match="unknown key"):
        load_profile("bad")
    user.write_text('[bad]\nbase = "acx"\n[bad.rules]\nsparkle = 1\n')
    with pytest.raises(UserError, match="unknown rule"):
        load_profile("bad")


def test_limiter_holds_true_peaks_and_leaves_the_rest():
    rate = 44100
    quiet = 0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    loud = quiet.copy()
    loud[20000:20400] *= 1 + 8 * np.hanning(400).astype(np.float32)  # a smooth burst to 0.9, far over -6 dBTP
    out = limit_true_peak(loud, rate, -6.0)
    print(f"[mastering] limiter: true peak {true_peak_db(loud):.2f} -> {true_peak_db(out):.2f} dBTP")
    assert true_peak_db(out) <= -6.0 + 1e-3
    untouched = np.r_[0:19000, 21400:rate]  # farther than the look-ahead from the burst
    assert np.allclose(out[untouched], quiet[untouched], atol=1e-6)
    assert np.all(np.abs(np.diff(out)) < 0.1)  # no steps: the gain moves smoothly


def test_gate_silences_the_gaps_and_keeps_the_words():
    rate = 24000
    words = np.zeros(rate * 2, dtype=np.float32)
    words[: rate // 2] = 0.3
    words += 0.001 * np.random.default_rng(1).standard_normal(words.size).astype(np.float32)  # -60 dB hiss
    out = gate(words, rate, -50.0)
    assert np.allclose(out[: rate // 2 - 100], words[: rate // 2 - 100])
    assert np.all(out[rate : 2 * rate] == 0.0)


def test_acx_master_meets_its_rules_before_encoding():
    acx = load_profile("acx")
    chapter = np.concatenate([np.zeros(int(0.75 * RATE), np.float32), speech_like(20.0), np.zeros(3 * RATE, np.float32)])
    out = master_file(chapter, RATE, acx)
    floor = noise_floor_db(out, acx.sample_rate)
    head, tail = speech_edges(out, acx.sample_rate, floor)
    print(f"[mastering] acx before encoding: rms {rms_db(out):.2f} dB, true peak {true_peak_db(out):.2f} dBTP, "
          f"floor {floor:.1f} dB, head {head:.2f} s, tail {tail:.2f} s")
    assert abs(rms_db(out) - acx.target) < 0.25 and true_peak_db(out) <= acx.peak_ceiling + 1e-3
    assert -80 < floor <= -65  # room tone: quiet, but never digital silence
    assert 0.5 <= head <= 1.0 and 1.0 <= tail <= 5.0


@pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")
def test_measure_any_file_and_name_the_failed_rules(tmp_path):
    """A plain 48 kHz WAV someone else made: too loud, no room tone, no tags; each rule says so."""
    rate = 48000
    t = np.arange(rate * 3) / rate
    loud = (0.9 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    path = tmp_path / "loud.wav"
    soundfile.write(path, loud, rate)
    measurement = measure_file(path)
    results = {result.rule: result for result in apply_rules(measurement, load_profile("acx"))}
    print(f"[mastering] loud.wav: {[(r.rule, r.measured, r.passed) for r in results.values()]}")
    assert not results["sample rate"].passed and results["sample rate"].measured == "48000 Hz"
    assert not results["RMS"].passed and not results["peak"].passed and not results["codec"].passed
    assert not results["head room tone"].passed and results["head room tone"].measured == "0.00 s"
    assert not results["tail room tone"].passed and not results["tags"].passed and results["channels"].passed
    assert abs(measurement.rms_db - 20 * np.log10(0.9 / np.sqrt(2))) < 0.05
