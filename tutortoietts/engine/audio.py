"""Audio front-ends: reading voice clips, resampling, and the two mel spectrograms the networks condition on."""

from __future__ import annotations

import functools
import importlib.resources
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The autoregressive model hears 22.05 kHz audio; the diffusion decoder and vocoder work at 24 kHz.
from tutortoietts.engine.limits import CONDITIONING_SAMPLE_RATE, SAMPLE_RATE
from tutortoietts.errors import UserError

CONDITIONING_SAMPLES = 132300  # 6 s at 22.05 kHz: api.format_conditioning's cond_length
DIFFUSION_CONDITIONING_SAMPLES = 102400  # what get_conditioning_latents pads/truncates to at 24 kHz

N_FFT = 1024
HOP = 256
LOG_FLOOR = 1e-5  # dynamic range compression: log(max(x, 1e-5)) in both front-ends

SOUNDFILE_SUFFIXES = (".wav", ".flac")
FFMPEG_SUFFIXES = (".mp3", ".m4a", ".ogg")


# ---------------------------------------------------------------------------------------------
# Reading clips


def load_clip(path, sample_rate: int) -> torch.Tensor:
    """A clip as float32 mono samples in [-1, 1] at `sample_rate`. # (S,)"""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SOUNDFILE_SUFFIXES:
        samples, rate = _read_with_soundfile(path)
    elif suffix in FFMPEG_SUFFIXES:
        samples, rate = _read_with_ffmpeg(path)
    else:
        known = ", ".join(SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES)
        raise UserError(f"unsupported audio format {suffix or '(no extension)'!r} for {path} (use one of {known})")
    if samples.numel() == 0:
        raise UserError(f"audio file has no samples: {path}")
    wave = resample(samples, rate, sample_rate)
    # The reference clips too: voice clips that overdrive slightly must not reach the mels unbounded.
    return wave.clamp(-1.0, 1.0).contiguous()


def _read_with_soundfile(path: Path) -> tuple[torch.Tensor, int]:
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise UserError(f"cannot read audio file {path}: {err}") from None
    # First channel, not a down-mix: the reference's load_audio keeps channel 0 of a wav.
    return torch.from_numpy(np.ascontiguousarray(data[:, 0])), int(rate)


def _read_with_ffmpeg(path: Path) -> tuple[torch.Tensor, int]:
    if shutil.which("ffmpeg") is None:
        raise UserError(f"reading {path.suffix} files needs the ffmpeg program; install it or convert {path} to wav")
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError

    try:
        segment = AudioSegment.from_file(str(path))
    except (CouldntDecodeError, OSError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read audio file {path}: {reason}") from None
    raw = np.array(segment.get_array_of_samples(), dtype=np.float64)
    full_scale = float(1 << (8 * segment.sample_width - 1))
    frames = raw.reshape(-1, segment.channels) / full_scale  # (S, channels)
    # Down-mix: what the reference's librosa.load(mono=True) does for compressed formats.
    return torch.from_numpy(frames.mean(axis=1).astype(np.float32)), int(segment.frame_rate)


# ---------------------------------------------------------------------------------------------
# Resampling: a polyphase windowed-sinc filter, the same one torchaudio.functional.resample uses by
# default (sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99). Each output sample y[m] at time
# m / to_rate is sum_k x[k] h(k / from_rate - m / to_rate) with h an ideal low-pass at
# rolloff x the slower Nyquist frequency, truncated to `ZERO_CROSSINGS` lobes by a Hann window.

ZERO_CROSSINGS = 6
ROLLOFF = 0.99


@functools.lru_cache(maxsize=16)
def _sinc_kernels(from_units: int, to_units: int) -> tuple[torch.Tensor, int]:
    """One filter per output phase, float64. # (to_units, 1, taps), and the half-width in input samples.

    Rates are in units of their gcd, so the pattern of input/output alignment repeats every
    `from_units` input and `to_units` output samples: output phase p of block q sits at input
    position q * from_units + p * from_units / to_units.
    """
    cutoff = min(from_units, to_units) * ROLLOFF  # in cycles per gcd-second, times 2
    half_width = math.ceil(ZERO_CROSSINGS * from_units / cutoff)  # input samples either side
    taps = torch.arange(-half_width, half_width + from_units, dtype=torch.float64)  # input offset j
    phases = torch.arange(to_units, dtype=torch.float64)
    # Distance between input sample j and output phase p, in units where the sinc crosses zero at integers.
    distance = (taps[None, :] / from_units - phases[:, None] / to_units) * cutoff  # (to_units, taps)
    inside = distance.abs() <= ZERO_CROSSINGS
    window = torch.where(inside, torch.cos(distance * math.pi / (2 * ZERO_CROSSINGS)) ** 2, 0.0)
    kernels = torch.sinc(distance) * window * (cutoff / from_units)  # gain 1 in the pass band
    return kernels[:, None, :], half_width


def resample(wave: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """`wave` (..., S) at `from_rate` -> (..., ceil(S * to_rate / from_rate)) at `to_rate`."""
    if from_rate == to_rate:
        return wave
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    common = math.gcd(int(from_rate), int(to_rate))
    from_units, to_units = int(from_rate) // common, int(to_rate) // common
    kernels, half_width = _sinc_kernels(from_units, to_units)
    kernels = kernels.to(device=wave.device, dtype=wave.dtype)

    leading, length = wave.shape[:-1], wave.shape[-1]
    flat = wave.reshape(-1, 1, length)  # (N, 1, S)
    # Zeros beyond both ends; the extra `from_units` on the right completes the last block.
    padded = F.pad(flat, (half_width, half_width + from_units))
    blocks = F.conv1d(padded, kernels, stride=from_units)  # (N, to_units, blocks)
    out = blocks.transpose(1, 2).reshape(flat.shape[0], -1)  # phases interleave into time order
    out_length = math.ceil(to_units * length / from_units)
    return out[:, :out_length].reshape(*leading, out_length)


# ---------------------------------------------------------------------------------------------
# Mel spectrograms


def _hz_to_mel(hz: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    # Slaney's Auditory Toolbox: linear below 1 kHz, logarithmic above (librosa's default).
    linear = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    logarithmic = 15.0 + torch.log(torch.clamp(hz, min=1e-10) / 1000.0) / log_step
    return torch.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    logarithmic = 1000.0 * torch.exp(log_step * (mel - 15.0))
    return torch.where(mel >= 15.0, logarithmic, linear)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, scale: str) -> torch.Tensor:
    """Triangular mel filters with Slaney area normalisation, float32. # (n_mels, n_fft // 2 + 1)"""
    bin_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_edges = torch.linspace(
        _hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64), scale).item(),
        _hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64), scale).item(),
        n_mels + 2, dtype=torch.float64,
    )
    edges = _mel_to_hz(mel_edges, scale)  # (n_mels + 2,) left, centre, right of each filter
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz[None, :] - left) / (centre - left)
    falling = (right - bin_hz[None, :]) / (right - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    # Slaney normalisation: every filter has the same area, so wide high bands are not louder.
    filters = filters * (2.0 / (right - left))
    return filters.float()


def _stft(wave: torch.Tensor) -> torch.Tensor:
    """Centred, reflect-padded STFT with a periodic Hann window. (B, S) -> (B, N_FFT // 2 + 1, frames) complex"""
    window = torch.hann_window(N_FFT, periodic=True, dtype=wave.dtype, device=wave.device)
    return torch.stft(wave, N_FFT, hop_length=HOP, win_length=N_FFT, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)


@functools.lru_cache(maxsize=1)
def mel_norms() -> torch.Tensor:
    """Per-band divisors of the AR conditioning mel, from the tortoise-tts package data. # (80,)"""
    resource = importlib.resources.files("tortoise").joinpath("data/mel_norms.pth")
    with importlib.resources.as_file(resource) as path:
        return torch.load(path, map_location="cpu", weights_only=True).float()


def _as_batch(clip: torch.Tensor) -> torch.Tensor:
    """Accept (S,) or (1, S); the front-ends work on one clip at a time. -> (1, S) float32"""
    if clip.dim() == 1:
        clip = clip[None]
    if clip.dim() != 2 or clip.shape[0] != 1:
        raise ValueError(f"expected one mono clip shaped (samples,) or (1, samples), got {tuple(clip.shape)}")
    return clip.float()


def _fit_length(clip: torch.Tensor, length: int, centre: bool) -> torch.Tensor:
    """Zero-pad at the end, or crop to `length` (from the middle when `centre`). (1, S) -> (1, length)"""
    gap = clip.shape[-1] - length
    if gap <= 0:
        return F.pad(clip, (0, -gap))
    start = gap // 2 if centre else 0
    return clip[..., start:start + length]


def conditioning_mel(clip_22k: torch.Tensor) -> torch.Tensor:
    """The autoregressive model's conditioning mel of one 22.05 kHz clip. -> (1, 80, 517)

    torchaudio's MelSpectrogram as the reference's TorchMelSpectrogram configures it (power 2,
    HTK mel scale, Slaney-normalised filters 0-8 kHz), log-compressed and divided by the mel norms.
    Long clips are cropped from the middle, not at a random offset as the reference does, so
    the same clip always gives the same voice.
    """
    clip = _fit_length(_as_batch(clip_22k), CONDITIONING_SAMPLES, centre=True)  # (1, S)
    spectrum = _stft(clip)
    power = spectrum.real ** 2 + spectrum.imag ** 2  # (1, 513, frames)
    filters = mel_filterbank(CONDITIONING_SAMPLE_RATE, N_FFT, 80, 0.0, 8000.0, "htk").to(clip.device)
    mel = torch.log(torch.clamp(filters @ power, min=LOG_FLOOR))  # (1, 80, frames)
    return mel / mel_norms().to(clip.device)[None, :, None]


def diffusion_mel(clip_22k: torch.Tensor) -> torch.Tensor:
    """The diffusion decoder's conditioning mel of one 22.05 kHz clip. -> (1, 100, 401)

    The reference's wav_to_univnet_mel(do_normalization=False): magnitude (not power) STFT at
    24 kHz, librosa's default mel filters (Slaney scale and norm, 100 bands 0-12 kHz), log-compressed.
    """
    clip = resample(_as_batch(clip_22k), CONDITIONING_SAMPLE_RATE, SAMPLE_RATE)
    return univnet_mel(_fit_length(clip, DIFFUSION_CONDITIONING_SAMPLES, centre=False))  # (1, 100, 401)


def univnet_mel(wave_24k: torch.Tensor) -> torch.Tensor:
    """The 24 kHz mel of any batch of waves, no fixed length. (B, S) -> (B, 100, frames)"""
    wave = wave_24k.float().clamp(-1.0, 1.0)  # TacotronSTFT clips before its STFT
    magnitude = _stft(wave).abs()  # (B, 513, frames)
    filters = mel_filterbank(SAMPLE_RATE, N_FFT, 100, 0.0, 12000.0, "slaney").to(wave.device)
    return torch.log(torch.clamp(filters @ magnitude, min=LOG_FLOOR))
