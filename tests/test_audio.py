"""Audio front-ends: mels against the reference and librosa, resampling against a direct sinc sum, clip loading."""

from __future__ import annotations

import math
import shutil

import librosa
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from tortoise.utils.audio import wav_to_univnet_mel

from tests.conftest import report
from tutortoietts.engine import audio
from tutortoietts.errors import UserError


def speech_like_clip(samples: int, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """Speech-like test signal: a few harmonics plus broadband noise, so every mel band has energy."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    wave = sum(0.2 / k * torch.sin(2 * math.pi * 180.0 * k * t + k) for k in range(1, 8))
    wave = wave + 0.03 * torch.randn(samples, generator=generator, dtype=torch.float64)
    return wave.float()


# --- mel spectrograms -------------------------------------------------------------------------


@pytest.mark.parametrize("scale, rate, bands, f_max", [("htk", 22050, 80, 8000.0), ("slaney", 24000, 100, 12000.0)])
def test_mel_filterbank_matches_librosa(scale, rate, bands, f_max):
    ours = audio.mel_filterbank(rate, 1024, bands, 0.0, f_max, scale)
    theirs = librosa.filters.mel(sr=rate, n_fft=1024, n_mels=bands, fmin=0.0, fmax=f_max, htk=scale == "htk", norm="slaney")
    diff, peak = report(f"mel filterbank {scale}", ours, torch.from_numpy(theirs))
    assert ours.shape == (bands, 513)
    assert diff <= 1e-6 * peak


def test_univnet_mel_matches_reference():
    wave = speech_like_clip(36000, 24000)[None]  # (1, S) at 24 kHz
    theirs = wav_to_univnet_mel(wave, do_normalization=False, device="cpu")
    ours = audio.univnet_mel(wave)
    assert ours.shape == theirs.shape == (1, 100, 36000 // 256 + 1)
    diff, _ = report("univnet mel (log)", ours, theirs)
    assert diff <= 1e-4  # log domain: a relative error of 1e-4 in the mel energies


def test_diffusion_mel_is_reference_recipe():
    """Resample, pad to 102400 at the end, then the reference's mel (here with our resampler)."""
    clip = speech_like_clip(50000, 22050)
    at_24k = audio.resample(clip, 22050, 24000)
    theirs = wav_to_univnet_mel(F.pad(at_24k, (0, 102400 - at_24k.shape[-1]))[None], do_normalization=False, device="cpu")
    ours = audio.diffusion_mel(clip)
    assert ours.shape == (1, 100, 401)
    diff, _ = report("diffusion mel (short clip, padded)", ours, theirs)
    assert diff <= 1e-4
    long_clip = speech_like_clip(120000, 22050, seed=1)
    ours_long = audio.diffusion_mel(long_clip[None])
    truncated = audio.resample(long_clip, 22050, 24000)[:102400]
    diff, _ = report("diffusion mel (long clip, truncated)", ours_long, wav_to_univnet_mel(truncated[None], device="cpu"))
    assert ours_long.shape == (1, 100, 401)
    assert diff <= 1e-4


def librosa_conditioning_mel(clip: np.ndarray) -> torch.Tensor:
    """An independent computation of the AR conditioning mel: librosa's STFT and filters."""
    power = librosa.feature.melspectrogram(
        y=clip, sr=22050, n_fft=1024, hop_length=256, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=80, fmin=0.0, fmax=8000.0, htk=True, norm="slaney",
    )
    mel = np.log(np.maximum(power, 1e-5))
    return torch.from_numpy(mel)[None] / audio.mel_norms()[None, :, None]


def test_conditioning_mel_long_clip_is_centre_cropped():
    clip = speech_like_clip(140001, 22050)
    start = (140001 - 132300) // 2
    theirs = librosa_conditioning_mel(clip[start:start + 132300].numpy().astype(np.float64))
    ours = audio.conditioning_mel(clip)
    assert ours.shape == (1, 80, 517)
    diff, _ = report("conditioning mel (centre crop)", ours, theirs)
    assert diff <= 1e-4


def test_conditioning_mel_short_clip_is_zero_padded():
    clip = speech_like_clip(30000, 22050, seed=2)
    theirs = librosa_conditioning_mel(np.pad(clip.numpy().astype(np.float64), (0, 132300 - 30000)))
    ours = audio.conditioning_mel(clip[None])
    diff, _ = report("conditioning mel (padded)", ours, theirs)
    assert ours.shape == (1, 80, 517)
    assert diff <= 1e-4
    # The padded tail is silence: it sits at the log floor, divided by the norms.
    floor = math.log(1e-5) / audio.mel_norms()
    assert torch.allclose(ours[0, :, -100:], floor[:, None].expand(80, 100))


# --- resampling -------------------------------------------------------------------------------


def direct_sinc_resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """torchaudio's documented resampler written as the plain sum, float64: for every output sample,
    sum over input samples of x[k] * sinc * Hann window of the time between them."""
    width, rolloff = 6, 0.99
    cutoff = min(from_rate, to_rate) * rolloff  # Hz x 2: sinc zero crossings per second
    out_length = math.ceil(len(wave) * to_rate / from_rate)
    out_times = np.arange(out_length)[:, None] / to_rate
    in_times = np.arange(len(wave))[None, :] / from_rate
    distance = (in_times - out_times) * cutoff
    window = np.where(np.abs(distance) <= width, np.cos(np.pi * distance / (2 * width)) ** 2, 0.0)
    return (np.sinc(distance) * window * (cutoff / from_rate)) @ wave


@pytest.mark.parametrize("from_rate, to_rate", [(22050, 24000), (24000, 22050), (44100, 22050), (16000, 22050), (8000, 24000)])
def test_resample_matches_direct_sinc_sum(from_rate, to_rate):
    wave = np.random.default_rng(0).standard_normal(3001) * 0.3
    theirs = direct_sinc_resample(wave, from_rate, to_rate)
    ours = audio.resample(torch.from_numpy(wave).float(), from_rate, to_rate)
    assert ours.dtype == torch.float32
    assert ours.shape == (math.ceil(3001 * to_rate / from_rate),)
    diff, scale = report(f"resample {from_rate}->{to_rate}", ours, torch.from_numpy(theirs))
    assert diff <= 1e-5 * scale
    # Batched input gives the same rows.
    batched = audio.resample(torch.from_numpy(np.stack([wave, -wave])).float(), from_rate, to_rate)
    assert torch.allclose(batched[0], ours, atol=1e-6) and torch.allclose(batched[1], -ours, atol=1e-6)


def test_resample_same_rate_is_identity():
    wave = torch.randn(100)
    assert audio.resample(wave, 22050, 22050) is wave


def test_resample_round_trip_of_band_limited_signal():
    rate, samples = 22050, 22050
    t = torch.arange(samples, dtype=torch.float64) / rate
    tones = (220.0, 1000.0, 3150.0, 7000.0)
    wave = sum(0.2 * torch.sin(2 * math.pi * f * t + i) for i, f in enumerate(tones))
    up = audio.resample(wave, 22050, 24000)
    # The 24 kHz version is the same tones sampled at 24 kHz (away from the zero-padded ends).
    t_up = torch.arange(up.shape[-1], dtype=torch.float64) / 24000
    exact_up = sum(0.2 * torch.sin(2 * math.pi * f * t_up + i) for i, f in enumerate(tones))
    diff_up, _ = report("22050->24000 vs analytic tones (interior)", up[500:-500], exact_up[500:-500])
    back = audio.resample(up, 24000, 22050)
    assert back.shape == wave.shape
    diff_back, _ = report("22050->24000->22050 round trip (interior)", back[500:-500], wave[500:-500])
    assert diff_up <= 5e-3
    assert diff_back <= 5e-3


# --- loading clips ----------------------------------------------------------------------------


def test_load_wav_keeps_first_channel_and_resamples(tmp_path):
    left = speech_like_clip(24000, 24000).numpy()
    right = -0.5 * left
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 24000, subtype="PCM_16")
    clip = audio.load_clip(path, 22050)
    pcm_left = torch.from_numpy(soundfile.read(path, dtype="float32")[0][:, 0].copy())
    expected = audio.resample(pcm_left, 24000, 22050).clamp(-1, 1)
    assert clip.dtype == torch.float32 and clip.shape == (22050,)
    diff, _ = report("load_clip wav 24k stereo -> 22.05k", clip, expected)
    assert diff == 0.0
    # 16-bit PCM reads as int / 32768, like the reference's scipy reader.
    assert (clip.abs().max() - expected.abs().max()).abs() < 1e-7


def test_load_flac_at_native_rate(tmp_path):
    wave = speech_like_clip(5000, 22050).numpy()
    path = tmp_path / "voice.flac"
    soundfile.write(path, wave, 22050)
    clip = audio.load_clip(path, 22050)
    diff, _ = report("load_clip flac", clip, torch.from_numpy(wave))
    assert diff <= 1.0 / 32768  # 16-bit FLAC quantisation


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")
def test_load_mp3_through_ffmpeg(tmp_path):
    from pydub import AudioSegment

    wave = speech_like_clip(22050, 22050).numpy()
    wav_path = tmp_path / "tone.wav"
    soundfile.write(wav_path, wave, 22050, subtype="PCM_16")
    AudioSegment.from_wav(wav_path).export(tmp_path / "tone.mp3", format="mp3", bitrate="192k")
    clip = audio.load_clip(tmp_path / "tone.mp3", 22050)
    # mp3 adds encoder delay and a lossy spectrum: check length and that the tone is there.
    assert abs(clip.shape[0] - 22050) < 3000
    spectrum = torch.fft.rfft(clip[:16384]).abs()
    peak_hz = spectrum[10:].argmax().item() * 22050 / 16384 + 10 * 22050 / 16384
    print(f"[mp3] samples={clip.shape[0]}, spectral peak at {peak_hz:.1f} Hz")
    assert abs(peak_hz - 180.0) < 5.0


def test_load_clip_errors_are_user_errors(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not a riff file at all" * 10)
    with pytest.raises(UserError, match="garbage.wav"):
        audio.load_clip(garbage, 22050)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 22050)
    with pytest.raises(UserError, match="no samples"):
        audio.load_clip(empty, 22050)
    with pytest.raises(UserError, match="not found"):
        audio.load_clip(tmp_path / "missing.wav", 22050)
    with pytest.raises(UserError, match="unsupported audio format"):
        audio.load_clip(garbage.rename(tmp_path / "notes.txt"), 22050)
