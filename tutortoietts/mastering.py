"""Mastering profiles (masters.toml plus the user's): levelling, true-peak limiting, gate, room tone,
and the measurements and rules that `tutortoietts check` applies to any audio file."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import subprocess
import tomllib
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from tutortoietts.engine.limits import SAMPLE_RATE
from tutortoietts.errors import UserError
from tutortoietts.paths import user_masters_path  # $TUTORTOIETTS_MASTERS, else $XDG_CONFIG_HOME/tutortoietts/masters.toml

BUILTIN_MASTERS = Path(__file__).with_name("masters.toml")
LEVELS = ("book-rms", "rms", "lufs")
FORMATS = ("", "mp3", "m4b", "wav")
OVERSAMPLE = 4  # true peak per ITU-R BS.1770-4 annex 2: 4x oversampling at 44.1/48 kHz


@dataclass(frozen=True)
class Profile:
    """One mastering profile: what `generate --master` writes and what `check --master` demands."""

    name: str
    description: str = ""
    format: str = ""  # "" = the user's --format; else the only format this profile writes
    book_file: bool = True  # also one file for the whole book (ACX wants chapters only)
    sample_rate: int = SAMPLE_RATE  # the engine's own rate: no resampling unless a profile asks
    channels: int = 1
    bitrate: str = "64k"
    bitrate_mode: str = ""  # "cbr" forces constant bitrate (MP3); "" = the encoder's default
    level: str = "book-rms"
    target: float = -20.0  # dB RMS ("book-rms", "rms") or LUFS ("lufs")
    peak_ceiling: float = -3.0  # dBFS for "book-rms" (sample peak, by gain), dBTP with the limiter
    gate_db: float | None = None
    room_tone_db: float | None = None
    head_seconds: float = 1.0
    tail_seconds: float = 1.0
    rules: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"mastering profile {self.name!r}"
        if self.level not in LEVELS:
            raise UserError(f"{where}: level {self.level!r} must be one of {', '.join(LEVELS)}")
        if self.format not in FORMATS:
            raise UserError(f"{where}: format {self.format!r} must be mp3, m4b or wav (or left out)")
        if not 8000 <= self.sample_rate <= 192000 or self.channels not in (1, 2):
            raise UserError(f"{where}: sample_rate must be 8000-192000 and channels 1 or 2")
        if not (self.bitrate[:-1].isdigit() and self.bitrate.endswith("k")) or self.bitrate_mode not in ("", "cbr"):
            raise UserError(f"{where}: bitrate must look like '192k' and bitrate_mode be 'cbr' or left out")
        if not (0 <= self.head_seconds <= 30 and 0 <= self.tail_seconds <= 30):
            raise UserError(f"{where}: head_seconds and tail_seconds must be between 0 and 30")
        unknown = set(self.rules) - set(RULES)
        if unknown:
            raise UserError(f"{where}: unknown rule(s) {', '.join(sorted(unknown))} (known: {', '.join(RULES)})")


PROFILE_FIELDS = tuple(f.name for f in dataclasses.fields(Profile) if f.name != "name")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None
    except OSError as error:
        raise UserError(f"cannot read mastering profiles {path}: {error.strerror}") from None
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: {name!r} must be a table ([{name}]) of mastering values")
    return data


def profile_tables() -> dict[str, dict]:
    """Every profile's raw values: the built-in file, then the user's laid over it (rules merged too)."""
    tables = {name: dict(table) for name, table in _read_toml(BUILTIN_MASTERS).items()}
    user_path = user_masters_path()
    if not user_path.exists():
        if os.environ.get("TUTORTOIETTS_MASTERS"):
            raise UserError(f"TUTORTOIETTS_MASTERS points to {user_path}, which does not exist")
        return tables
    for name, table in _read_toml(user_path).items():
        table = dict(table)
        base = table.pop("base", None)
        if base is not None and base not in tables:
            raise UserError(f"{user_path}: profile {name!r} has base {base!r}, which is not a known profile")
        start = tables.get(base or name, {})
        rules = {**start.get("rules", {}), **table.pop("rules", {})}
        tables[name] = {**start, **table, "rules": rules}
    return tables


def profile_names() -> list[str]:
    return list(profile_tables())


def load_profile(name: str) -> Profile:
    tables = profile_tables()
    if name not in tables:
        close = difflib.get_close_matches(name, tables, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"unknown mastering profile {name!r}: {hint}known: {', '.join(tables)}")
    table = dict(tables[name])
    unknown = [key for key in table if key not in PROFILE_FIELDS]
    if unknown:
        raise UserError(f"mastering profile {name!r}: unknown key(s) {', '.join(unknown)} (known: {', '.join(PROFILE_FIELDS)})")
    try:
        return Profile(name=name, **table)
    except TypeError as error:
        raise UserError(f"mastering profile {name!r}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Signal measures


def to_db(value: float) -> float:
    return float(20 * math.log10(value)) if value > 0 else float("-inf")


def rms_db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return float("-inf")
    return to_db(math.sqrt(float(np.mean(np.square(samples, dtype=np.float64)))))


def peak_db(samples: np.ndarray) -> float:
    return to_db(float(np.max(np.abs(samples)))) if samples.size else float("-inf")


def true_peak_envelope(samples: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """Per input sample, the largest |value| of the 4x oversampled signal from it to the next (float32)."""
    from scipy.signal import resample_poly

    pad = 64  # the interpolation filter's reach, in input samples
    envelope = np.empty(len(samples), dtype=np.float32)
    for start in range(0, len(samples), block):
        stop = min(start + block, len(samples))
        low, high = max(0, start - pad), min(len(samples), stop + pad)
        upsampled = resample_poly(samples[low:high].astype(np.float64), OVERSAMPLE, 1)
        middle = upsampled[(start - low) * OVERSAMPLE : (stop - low) * OVERSAMPLE]
        envelope[start:stop] = np.abs(middle).reshape(-1, OVERSAMPLE).max(axis=1)
    return np.maximum(envelope, np.abs(samples))


def true_peak_db(samples: np.ndarray) -> float:
    return to_db(float(true_peak_envelope(samples).max())) if samples.size else float("-inf")


def loudness_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4, gated) by pyloudnorm; -inf for silence or under 0.4 s."""
    import pyloudnorm

    if len(samples) < int(0.4 * sample_rate) + 1:
        return float("-inf")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(samples, dtype=np.float64)))


def frame_levels(samples: np.ndarray, sample_rate: int, seconds: float, hop: float | None = None) -> np.ndarray:
    """RMS in dB of windows of `seconds` every `hop` seconds (mono, or channels' mean power)."""
    return window_levels(samples, max(1, round(seconds * sample_rate)), max(1, round((hop or seconds) * sample_rate)))


def window_levels(samples: np.ndarray, width: int, step: int) -> np.ndarray:
    """RMS in dB of `width`-sample windows every `step` samples; one window when the file is shorter."""
    power = np.square(samples, dtype=np.float64)
    if power.ndim == 2:
        power = power.mean(axis=1)
    if len(power) < width:
        return np.array([rms_db(samples)])
    sums = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, len(power) - width + 1, step)
    mean = (sums[starts + width] - sums[starts]) / width
    with np.errstate(divide="ignore"):
        return 10 * np.log10(np.maximum(mean, 0.0))


def noise_floor_db(samples: np.ndarray, sample_rate: int) -> float:
    """The quietest half second (stepped by a quarter): what is left when nobody speaks."""
    return float(frame_levels(samples, sample_rate, 0.5, 0.25).min())


def speech_edges(samples: np.ndarray, sample_rate: int, floor_db: float) -> tuple[float, float]:
    """(seconds before the first, after the last 10 ms frame clearly above the noise floor)."""
    frame = 0.01
    levels = frame_levels(samples, sample_rate, frame)
    # 15 dB over the floor, at least -55 dB; at most -30 dB, so sound that never gets quiet (no room
    # tone at all) counts as sound from its first frame.
    threshold = min(max(-55.0, floor_db + 15.0), -30.0) if math.isfinite(floor_db) else -55.0
    loud = np.flatnonzero(levels > threshold)
    duration = len(samples) / sample_rate
    if loud.size == 0:
        return duration, duration
    return float(loud[0] * frame), float(max(0.0, duration - (loud[-1] + 1) * frame))


# ---------------------------------------------------------------------------------------------
# Processing


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    common = gcd(rate_in, rate_out)
    return resample_poly(np.asarray(samples, dtype=np.float32), rate_out // common, rate_in // common).astype(np.float32)


def limit_true_peak(samples: np.ndarray, sample_rate: int, ceiling_db: float, lookahead: float = 0.005) -> np.ndarray:
    """A look-ahead limiter on the 4x-oversampled envelope: true peaks end at or under the ceiling.

    The gain each sample needs is spread over +-lookahead by a sliding minimum, then smoothed by a
    moving average of the same width; every window that averages over a peak holds that peak's
    gain or less, so the peak is met and the gain moves without steps (no clicks).
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    samples = np.asarray(samples, dtype=np.float32)
    width = 2 * max(1, int(lookahead * sample_rate)) + 1
    ceiling = 10 ** (ceiling_db / 20)
    for _ in range(4):  # the gain itself moves intersample peaks a little: check and go again
        envelope = true_peak_envelope(samples)
        if envelope.size == 0 or envelope.max() <= ceiling:
            return samples
        needed = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12)).astype(np.float32)
        gain = uniform_filter1d(minimum_filter1d(needed, width, mode="nearest"), width, mode="nearest")
        samples = samples * gain  # (T,)
        ceiling *= 0.995  # the next pass aims a hair lower
    return samples


def gate(samples: np.ndarray, sample_rate: int, threshold_db: float, hold: float = 0.06, ramp: float = 0.01) -> np.ndarray:
    """Stretches quieter than the threshold (noise between words) go to silence; words keep a
    little air (hold) and the gate opens and closes over a short ramp."""
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    frame = max(1, int(0.01 * sample_rate))
    count = -(-len(samples) // frame)
    padded = np.zeros(count * frame, dtype=np.float32)
    padded[: len(samples)] = samples
    levels = window_levels(padded, frame, frame)  # one level per 10 ms frame
    open_frames = levels > threshold_db
    open_frames = maximum_filter1d(open_frames.astype(np.float32), 2 * int(hold / 0.01) + 1) > 0
    gain = np.repeat(open_frames.astype(np.float32), frame)[: len(samples)]
    gain = uniform_filter1d(gain, max(1, int(ramp * sample_rate)), mode="nearest")
    return samples * gain


def room_tone(length: int, level_db: float, seed: int = 0) -> np.ndarray:
    """A steady, quiet noise bed at level_db RMS; the same for the same length."""
    noise = np.random.default_rng(seed).standard_normal(length, dtype=np.float32)
    return noise * np.float32(10 ** (level_db / 20))


def level_file(samples: np.ndarray, sample_rate: int, profile: Profile) -> np.ndarray:
    """One file to the profile's target (RMS or LUFS) with true peaks under its ceiling."""
    measure = (lambda x: loudness_lufs(x, sample_rate)) if profile.level == "lufs" else rms_db
    for _ in range(6):
        level = measure(samples)
        if not math.isfinite(level):
            return samples
        samples = samples * np.float32(10 ** ((profile.target - level) / 20))
        samples = limit_true_peak(samples, sample_rate, profile.peak_ceiling)
        if abs(measure(samples) - profile.target) < 0.2:
            break
    return samples


def master_file(samples: np.ndarray, sample_rate: int, profile: Profile) -> np.ndarray:
    """One assembled chapter at sample_rate -> the profile's rate, level, gate and room tone (float32)."""
    samples = resample(samples, sample_rate, profile.sample_rate)
    samples = level_file(samples, profile.sample_rate, profile)
    if profile.gate_db is not None:
        samples = level_file(gate(samples, profile.sample_rate, profile.gate_db), profile.sample_rate, profile)
    if profile.room_tone_db is not None:
        samples = samples + room_tone(len(samples), profile.room_tone_db)
    return samples.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Files: what ffprobe, mutagen and the decoded samples say; the rules on top


@dataclass
class Measurement:
    path: Path
    codec: str
    sample_rate: int
    channels: int
    duration: float  # seconds
    bitrate_kbps: float | None
    bitrate_mode: str  # "cbr" | "vbr" | "abr" | "unknown" (MP3), "" for other codecs
    rms_db: float
    peak_db: float
    true_peak_db: float
    noise_floor_db: float
    head_seconds: float
    tail_seconds: float
    lufs: float
    tags: dict[str, str]
    cover: bool

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["path"] = str(self.path)
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in values.items()}


def probe(path: Path) -> dict:
    from tutortoietts.ffmpeg import require_ffprobe

    result = subprocess.run([require_ffprobe(), "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["not an audio file"])[-1]
        raise UserError(f"{path} cannot be read as audio: {detail}")
    return json.loads(result.stdout)


def decode(path: Path, channels: int) -> np.ndarray:
    """The first audio stream as float32 samples (T,) or (T, channels), at the file's own rate."""
    from tutortoietts.ffmpeg import require_ffmpeg

    result = subprocess.run([require_ffmpeg(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
                             "-acodec", "pcm_f32le", "-"], capture_output=True)
    if result.returncode != 0:
        raise UserError(f"{path} cannot be decoded: {(result.stderr.decode(errors='replace').strip().splitlines() or ['?'])[-1]}")
    samples = np.frombuffer(result.stdout, dtype="<f4")
    return samples if channels == 1 else samples[: len(samples) // channels * channels].reshape(-1, channels)


def mp3_bitrate_mode(path: Path) -> str:
    from mutagen.mp3 import MP3, BitrateMode, HeaderNotFoundError

    try:
        mode = MP3(str(path)).info.bitrate_mode
    except (HeaderNotFoundError, OSError):
        return "unknown"
    return {BitrateMode.CBR: "cbr", BitrateMode.VBR: "vbr", BitrateMode.ABR: "abr"}.get(mode, "unknown")


def measure_file(path: Path) -> Measurement:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    info = probe(path)
    audio = next((s for s in info.get("streams", []) if s.get("codec_type") == "audio"), None)
    if audio is None:
        raise UserError(f"{path} has no audio stream")
    channels, rate = int(audio.get("channels") or 1), int(audio.get("sample_rate") or 0)
    samples = decode(path, channels)
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    bit_rate = audio.get("bit_rate") or info.get("format", {}).get("bit_rate")
    floor = noise_floor_db(samples, rate)
    head, tail = speech_edges(samples, rate, floor)
    tags = {key.lower(): value for key, value in info.get("format", {}).get("tags", {}).items()}
    tags.update({key.lower(): value for key, value in audio.get("tags", {}).items() if key.lower() == "language"})
    return Measurement(
        path=path, codec=audio.get("codec_name", ""), sample_rate=rate, channels=channels,
        duration=len(samples) / rate if rate else 0.0,
        bitrate_kbps=round(int(bit_rate) / 1000, 1) if bit_rate else None,
        bitrate_mode=mp3_bitrate_mode(path) if audio.get("codec_name") == "mp3" else "",
        rms_db=rms_db(samples), peak_db=peak_db(samples),
        true_peak_db=max(true_peak_db(np.ascontiguousarray(channel)) for channel in np.atleast_2d(samples.T)),
        noise_floor_db=floor, head_seconds=head, tail_seconds=tail, lufs=loudness_lufs(mono, rate), tags=tags,
        cover=any(s.get("disposition", {}).get("attached_pic") == 1 for s in info.get("streams", [])),
    )


@dataclass(frozen=True)
class RuleResult:
    rule: str
    measured: str
    required: str
    passed: bool


def _db(value: float) -> str:
    return f"{value:.1f} dB" if math.isfinite(value) else "-inf dB (digital silence)" if value < 0 else "inf"


def _window(label: str, value: float, bounds, unit: str, shown: str | None = None) -> tuple:
    low, high = bounds
    return shown or f"{value:.2f} {unit}", f"{low:g} to {high:g} {unit}", math.isfinite(value) and low <= value <= high


def _at_most(value: float, limit: float, shown: str) -> tuple:
    return shown, f"at most {limit:g} dB", value <= limit


# Each rule: (label, measurement, the profile's value) -> (measured, required, passed).
RULES = {
    "format": lambda m, v: (m.codec, v, m.codec == v),
    "sample_rate": lambda m, v: (f"{m.sample_rate} Hz", f"{v} Hz", m.sample_rate == v),
    "bitrate_kbps": lambda m, v: (f"{m.bitrate_kbps:g} kbps" if m.bitrate_kbps else "unknown", f"{v} kbps",
                                  m.bitrate_kbps is not None and abs(m.bitrate_kbps - v) <= 1),
    "bitrate_mode": lambda m, v: (m.bitrate_mode or "n/a", v, m.bitrate_mode == v),
    "channels": lambda m, v: (str(m.channels), " or ".join(map(str, v)) if isinstance(v, list) else str(v),
                              m.channels in (v if isinstance(v, list) else [v])),
    "rms_db": lambda m, v: _window("rms", m.rms_db, v, "dB", _db(m.rms_db)),
    "peak_max_db": lambda m, v: _at_most(m.peak_db, v, _db(m.peak_db)),
    "true_peak_max_db": lambda m, v: _at_most(m.true_peak_db, v, _db(m.true_peak_db) + "TP"),
    "noise_floor_max_db": lambda m, v: _at_most(m.noise_floor_db, v, _db(m.noise_floor_db)),
    "head_seconds": lambda m, v: _window("head", m.head_seconds, v, "s"),
    "tail_seconds": lambda m, v: _window("tail", m.tail_seconds, v, "s"),
    "duration_max_minutes": lambda m, v: (f"{m.duration / 60:.1f} min", f"at most {v:g} min", 0 < m.duration <= v * 60),
    "lufs": lambda m, v: _window("lufs", m.lufs, v, "LUFS"),
    "tags": lambda m, v: (", ".join(k for k in ("title", "artist", "album") if m.tags.get(k)) or "none",
                          "title and artist (--author)" if v else "-", not v or bool(m.tags.get("title") and m.tags.get("artist"))),
    "cover": lambda m, v: ("embedded" if m.cover else "none", "embedded" if v else "-", m.cover or not v),
}
RULE_LABELS = {
    "format": "codec", "sample_rate": "sample rate", "bitrate_kbps": "bitrate", "bitrate_mode": "bitrate mode",
    "channels": "channels", "rms_db": "RMS", "peak_max_db": "peak", "true_peak_max_db": "true peak",
    "noise_floor_max_db": "noise floor", "head_seconds": "head room tone", "tail_seconds": "tail room tone",
    "duration_max_minutes": "duration", "lufs": "loudness", "tags": "tags", "cover": "cover",
}  # fmt: skip


def apply_rules(measurement: Measurement, profile: Profile) -> list[RuleResult]:
    return [RuleResult(RULE_LABELS[name], *RULES[name](measurement, value)) for name, value in profile.rules.items()]
