"""Audio quality metrics of a test clip against a reference clip: MCD (DTW-aligned), PESQ wide-band, STOI, log-mel distance.

All four compare two renderings of the same text, the reference one taken as clean:
- mel-cepstral distortion (Kubichek 1993): cepstra from an 80-band mel spectrum, c0 (energy) left
  out, MCD = 10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2) dB per frame, averaged over the frames
  paired by dynamic time warping when the two clips have different frame counts;
- PESQ wide-band (ITU-T P.862.2) through the `pesq` package, both clips resampled to 16 kHz;
  from about 1.0 (bad) to 4.64 (identical);
- STOI (Taal et al. 2011) through `pystoi`, 0..1, on the clips cut to the shorter length
  (STOI assumes time-aligned signals: `aligned` in the result says whether they were);
- log-mel distance: RMS difference of natural-log mel spectra over the same frame pairs as MCD.

Meaningful only for speech from trained weights: on random weights the clips are noise and
every figure is noise too (reports print them with that warning).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PESQ_RATE = 16000  # P.862.2 wide-band works at 16 kHz
PESQ_MAX = 4.64  # the wide-band MOS-LQO mapping's ceiling (identical signals)
N_MELS = 80
N_FFT = 1024
HOP = 256
CEPSTRA = 24  # c1..c24: the usual MCD order for 22-24 kHz speech
DYNAMIC_RANGE_DB = 80.0  # mel power floor below a clip's loudest bin: digital silence stays finite
SPEECH_RANGE_DB = 40.0  # MCD counts reference frames within this much of the loudest frame (pauses left out)
MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)  # Kubichek's dB constant for natural-log cepstra


@dataclass
class Quality:
    """One comparison; None where a metric could not be computed (reason in `notes`)."""

    mcd: float | None  # dB, 0 = identical, lower is better
    pesq: float | None  # wide-band MOS-LQO, higher is better (max 4.64)
    stoi: float | None  # 0..1, higher is better
    log_mel: float | None  # RMS natural-log mel difference, 0 = identical
    aligned: bool  # same frame count: no DTW, and STOI saw the whole of both clips
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _mono(wave) -> np.ndarray:
    wave = np.asarray(wave.detach().cpu().numpy() if hasattr(wave, "detach") else wave, dtype=np.float64).reshape(-1)
    if wave.size == 0:
        raise ValueError("cannot measure an empty clip")
    return wave


def mel_power(wave, sample_rate: int) -> np.ndarray:
    """Mel power spectrum, (frames, N_MELS)."""
    import librosa

    power = librosa.feature.melspectrogram(y=_mono(wave), sr=sample_rate, n_fft=N_FFT, hop_length=HOP,
                                           n_mels=N_MELS, power=2.0, center=True)  # (N_MELS, frames)
    return power.T


def log_mel(power: np.ndarray) -> np.ndarray:
    """Natural-log mel amplitude ln |X|, floored DYNAMIC_RANGE_DB under the loudest bin: (frames, N_MELS)."""
    floor = max(float(power.max()), 1e-30) * 10 ** (-DYNAMIC_RANGE_DB / 10)
    return 0.5 * np.log(np.maximum(power, floor))


def mel_cepstra(log_mel_frames: np.ndarray) -> np.ndarray:
    """Mel cepstra c1..c24 of ln |X| frames, c0 dropped: (frames, CEPSTRA).

    Scaled as a cepstrum, ln|X(w)| = c0 + 2 sum_n c_n cos(n w) over the mel axis sampled at N
    band centres, i.e. c_n = DCT-II(x)_n / (2N): the convention Kubichek's constant assumes, so
    figures land on the usual MCD scale (an orthonormal DCT would inflate them by sqrt(2N)).
    """
    from scipy.fft import dct

    bands = log_mel_frames.shape[1]
    return dct(log_mel_frames, type=2, norm=None, axis=1)[:, 1 : CEPSTRA + 1] / (2 * bands)


def frame_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of paired frames: one to one for equal lengths, else the DTW path on Euclidean distance."""
    if len(a) == len(b):
        index = np.arange(len(a))
        return index, index
    import librosa

    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")  # path runs end -> start
    path = path[::-1]
    return path[:, 0], path[:, 1]


def mcd_and_log_mel(reference, test, sample_rate: int) -> tuple[float, float, bool]:
    """(MCD dB, log-mel RMS, aligned without DTW) of test against reference."""
    power_ref, power_test = mel_power(reference, sample_rate), mel_power(test, sample_rate)
    # A floor under each clip's own loudest bin: the pauses of clean speech are digital silence,
    # which must stay finite, and a level change (a gain, which only c0 carries) must stay out of MCD.
    mel_ref, mel_test = log_mel(power_ref), log_mel(power_test)
    cep_ref, cep_test = mel_cepstra(mel_ref), mel_cepstra(mel_test)
    i, j = frame_pairs(cep_ref, cep_test)
    per_frame = MCD_SCALE * np.sqrt(((cep_ref[i] - cep_test[j]) ** 2).sum(axis=1))
    # As MCD is usually reported: over speech frames. The pauses' cepstra describe only how the
    # floor cuts the noise there, which says nothing of the voice.
    energy = power_ref.sum(axis=1)
    speech = energy[i] >= energy.max() * 10 ** (-SPEECH_RANGE_DB / 10)
    log_mel_rms = float(np.sqrt(((mel_ref[i] - mel_test[j]) ** 2).mean()))
    return float(per_frame[speech].mean()), log_mel_rms, len(mel_ref) == len(mel_test)


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact ratio."""
    if from_rate == to_rate:
        return wave
    from scipy.signal import resample_poly

    divisor = math.gcd(from_rate, to_rate)
    return resample_poly(wave, to_rate // divisor, from_rate // divisor)


def pesq_wideband(reference, test, sample_rate: int) -> float:
    """PESQ P.862.2 wide-band MOS-LQO at 16 kHz; raises the package's error for a clip without speech."""
    from pesq import pesq

    ref = resample(_mono(reference), sample_rate, PESQ_RATE)
    deg = resample(_mono(test), sample_rate, PESQ_RATE)
    return float(pesq(PESQ_RATE, ref.astype(np.float32), deg.astype(np.float32), "wb"))


def stoi_score(reference, test, sample_rate: int) -> float:
    """STOI on the two clips cut to the shorter one (pystoi resamples to 10 kHz itself)."""
    from pystoi import stoi

    ref, deg = _mono(reference), _mono(test)
    length = min(len(ref), len(deg))
    return float(stoi(ref[:length], deg[:length], sample_rate, extended=False))


def compare(reference, test, sample_rate: int) -> Quality:
    """Every metric of `test` against `reference` (1-D clips at one rate)."""
    notes = []
    mcd, log_mel_rms, aligned = mcd_and_log_mel(reference, test, sample_rate)
    if not aligned:
        notes.append("lengths differ: MCD and log-mel over DTW-paired frames, STOI on the shorter length")
    try:
        pesq_value = pesq_wideband(reference, test, sample_rate)
    except Exception as error:  # the pesq package raises its own types (no utterance found, too short)
        pesq_value = None
        notes.append(f"PESQ not computed: {type(error).__name__}: {error}")
    try:
        stoi_value = stoi_score(reference, test, sample_rate)
    except Exception as error:  # pystoi: too short for one 30-frame segment once silent frames go
        stoi_value = None
        notes.append(f"STOI not computed: {type(error).__name__}: {error}")
    if stoi_value is not None and not math.isfinite(stoi_value):
        stoi_value = None
        notes.append("STOI not computed: no frame above pystoi's silence threshold")
    return Quality(mcd=mcd, pesq=pesq_value, stoi=stoi_value, log_mel=log_mel_rms, aligned=aligned, notes=notes)


def add_noise(wave, snr_db: float, seed: int = 0) -> np.ndarray:
    """The clip plus white Gaussian noise at `snr_db` (signal power over noise power)."""
    wave = _mono(wave)
    power = float((wave**2).mean())
    noise = np.random.default_rng(seed).standard_normal(wave.size)
    return wave + noise * math.sqrt(power / 10 ** (snr_db / 10))
