"""Quality checks on rendered chunks: pure functions from samples, text, codes and scores to figures and flags.

A chunk's figures (`chunk_figures`) are measured once, stored with its take in the job database,
and judged by `judge` against `Limits`; re-judging with other limits needs no audio. Checks:

- no_stop: the chosen candidate never emitted the stop token (runaway or truncated speech).
- not_speech: too few voiced frames among the loud ones (noise, hiss, random weights).
- clipping: runs of samples pinned at the peak.
- silence: a long pause inside the chunk, or too much silence before or after it.
- truncated: the audio ends at speaking level, without the decay speech ends with (cut mid-word).
- repetition: a long stretch of the chunk's spectral frames repeats later in it (a loop, babble).
- duration: the speaking rate (phones of the text per second of speech) is implausible.
- asr: the recogniser heard few of the chunk's words (asr.py), optional.
- clvp, voice: relative to the whole book, so judged by `judge_book` over every chunk at once.

One defect often trips several checks (a sentence looped three times is also three times too
long), so `attribute` names the cause: a flag explained by another flag is listed as `also`,
never dropped, and the chunk counts as flagged either way.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from tutortoietts.asr import spoken_words  # noqa: F401  (defined beside the recogniser, which needs it too)

ANALYSIS_RATE = 16000  # every measure below runs on 16 kHz audio (also what the recogniser wants)
FRAME = 400  # 25 ms analysis frames
HOP = 160  # 10 ms between frames
FRAME_SECONDS = HOP / ANALYSIS_RATE
PITCH_FRAME = 640  # 40 ms: two periods of an 80 Hz voice, for the autocorrelation
MIN_LAG, MAX_LAG = 32, 256  # 500 Hz .. 62.5 Hz at 16 kHz
N_MELS, N_CEPS = 40, 12
MIN_VOICED_FRAMES = 100  # 1 s of voicing before a chunk's voice is measured at all

# Chunk-local checks, in the order `attribute` considers them, then the book-relative ones.
LOCAL_CHECKS = ("no_stop", "clipping", "not_speech", "silence", "repetition", "truncated", "duration", "asr")
BOOK_CHECKS = ("clvp", "voice")
CHECKS = LOCAL_CHECKS + BOOK_CHECKS

# What a flag accounts for when both are raised: the first is the cause, the second a consequence.
EXPLAINS = {
    "clipping": {"not_speech", "voice", "asr"},  # overdrive adds noise-like harmonics and bends the timbre
    "not_speech": {"silence", "repetition", "truncated", "duration", "asr", "voice", "clvp"},  # nothing to measure speech by
    "no_stop": {"truncated", "duration", "repetition"},  # runaway speech is long, loops, and is cut at the token limit
    "silence": {"duration", "asr"},
    "repetition": {"duration", "asr"},  # a loop is long for its text and inserts words
    "truncated": {"duration", "asr"},  # the lost words are missing and the rest too quick for the text
}


@dataclass(frozen=True)
class Limits:
    """Where each check draws its line. Calibrated on espeak-ng speech and the real voice clips
    bundled with tortoise-tts (tests/test_qa_checks.py prints what every clip measured)."""

    speech_range_db: float = 35.0  # a frame is speech when within this of the chunk's loud level (95th percentile)
    floor_dbfs: float = -60.0  # ...and above this absolute level
    voiced_correlation: float = 0.6  # normalised autocorrelation peak that makes a frame voiced
    min_voiced_fraction: float = 0.15  # not_speech below this share of voiced frames among speech frames...
    max_flatness: float = 0.3  # ...or above this median spectral flatness (white noise ~0.56, speech <= 0.07)
    clip_run: int = 3  # consecutive samples at the peak that count as clipped
    max_clipped_fraction: float = 0.001  # clipping above 0.1% of the samples
    max_pause: float = 2.0  # seconds of silence inside a chunk (sentence pauses are ~0.3-0.8 s)
    max_lead: float = 1.0  # seconds of silence before the speech
    max_trail: float = 1.5  # ... and after it
    pause_allowance: float = 0.5  # each pause counts towards speaking time up to this long
    truncated_level_db: float = -10.0  # the last 20 ms this close to the loud level: cut off
    repeat_similarity: float = 0.8  # mean cosine similarity of a repeated stretch's cepstra
    repeat_window: int = 10  # 20 ms frames the similarity is averaged over (0.2 s)
    min_repeat_lag: float = 0.3  # seconds: closer matches are one sound held, not a repeat
    max_repeat: float = 1.0  # seconds of repeated audio beyond what the text itself repeats
    min_rate: float = 6.0  # phones per second of speaking time; narrators speak ~10-15
    max_rate: float = 25.0
    rate_slack: float = 0.6  # seconds either way, for very short chunks
    min_recall: float = 0.6  # asr: share of the text's words heard (espeak: right text >= 0.73, other text <= 0.54)
    min_asr_words: int = 3  # fewer checkable words: no verdict
    book_z: float = 4.0  # clvp/voice: robust z-score beyond which a chunk is an outlier in its book
    min_clvp_gap: float = 0.5  # ...and at least this far below the book's median CLVP score
    min_pitch_gap: float = 4.0  # semitones from the book's median pitch (sentences vary by 1-3; a new speaker ~10)
    min_timbre_gap: float = 0.08  # cepstral cosine similarity below the book's median (espeak: clean >= 0.94, other voice <= 0.77)


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------------
# Text: what should be heard


@functools.lru_cache(maxsize=1)
def pronunciations() -> dict[str, int]:
    """Word -> phone count from the CMU dictionary that pocketsphinx ships (126k words), {} without it."""
    from tutortoietts.asr import dictionary_path

    path = dictionary_path()
    counts: dict[str, int] = {}
    if path is None:
        return counts
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            word, _, phones = line.partition(" ")
            if "(" not in word:  # alternative pronunciations have the same length, near enough
                counts[word] = len(phones.split())
    return counts


PHONES_PER_LETTER = 0.86  # the CMU dictionary's mean, for words it does not have


def phone_count(words: list[str]) -> tuple[int, int]:
    """(phones, words not in the dictionary) for a list of spoken words."""
    table = pronunciations()
    phones, unknown = 0, 0
    for word in words:
        known = table.get(word)
        if known is None:
            unknown += 1
            known = max(1, round(len(word) * PHONES_PER_LETTER))
        phones += known
    return phones, unknown


def repeated_words(words: list[str]) -> list[str]:
    """The longest word sequence the text itself says twice (not overlapping): a repeat the audio may echo."""
    best: list[str] = []
    for length in range(1, len(words) // 2 + 1):
        seen: dict[tuple, int] = {}
        found = None
        for start in range(len(words) - length + 1):
            gram = tuple(words[start : start + length])
            if gram in seen and seen[gram] + length <= start:
                found = list(gram)
                break
            seen.setdefault(gram, start)
        if found is None:
            break  # no repeat of this length: none longer either
        best = found
    return best


# ---------------------------------------------------------------------------------------------
# Audio analysis: one pass of frames shared by the checks


def to_analysis_rate(samples, sample_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (the engine's band-limited resampler)."""
    wave = np.asarray(samples.detach().cpu().numpy() if hasattr(samples, "detach") else samples, dtype=np.float32)
    wave = wave.reshape(-1)
    if sample_rate == ANALYSIS_RATE:
        return wave
    import torch

    from tutortoietts.engine.audio import resample

    return resample(torch.from_numpy(wave.copy()), int(sample_rate), ANALYSIS_RATE).numpy()


@functools.lru_cache(maxsize=4)
def _mel_basis(n_fft: int = 512) -> np.ndarray:
    """Triangular HTK mel filters, 60 Hz - 7.6 kHz: (N_MELS, n_fft // 2 + 1)."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    edges_mel = np.linspace(to_mel(60.0), to_mel(7600.0), N_MELS + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / ANALYSIS_RATE)
    basis = np.zeros((N_MELS, bins.size))
    for band in range(N_MELS):
        low, centre, high = edges[band : band + 3]
        rising = (bins - low) / (centre - low)
        falling = (high - bins) / (high - centre)
        basis[band] = np.clip(np.minimum(rising, falling), 0.0, None)
    return basis


@functools.lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """DCT-II rows 1..N_CEPS (c0, the loudness, left out): (N_CEPS, N_MELS)."""
    n = np.arange(N_MELS)
    return np.stack([np.cos(math.pi * k * (2 * n + 1) / (2 * N_MELS)) for k in range(1, N_CEPS + 1)])


def _frames(wave: np.ndarray, length: int) -> np.ndarray:
    """(count, length) frames every HOP samples, the last one zero-padded."""
    count = max(1, 1 + max(0, len(wave) - FRAME + HOP - 1) // HOP)
    padded = np.zeros((count - 1) * HOP + length, dtype=np.float32)
    padded[: min(len(wave), padded.size)] = wave[: padded.size]
    view = np.lib.stride_tricks.sliding_window_view(padded, length)[::HOP]
    return view[:count]


@dataclass
class Analysis:
    """Per-frame measures of one clip at 16 kHz, 10 ms apart."""

    seconds: float
    level_db: np.ndarray  # (frames,) dBFS of each 25 ms frame
    loud_db: float  # the clip's loud level: 95th percentile of level_db
    speech: np.ndarray  # (frames,) bool: within speech_range_db of loud_db and above the floor
    voiced: np.ndarray  # (frames,) bool: speech with a clear period
    f0: np.ndarray  # (frames,) Hz where voiced, else nan
    cepstra: np.ndarray  # (frames, N_CEPS) mel cepstra c1..c12
    flatness: np.ndarray  # (frames,) spectral flatness (1: white noise, ~0.01-0.1: voiced speech)
    end_level_db: float  # dBFS of the last 20 ms


def analyse(wave: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> Analysis:
    """One pass over a 16 kHz clip: level, speech/voicing, pitch, cepstra, flatness."""
    wave = np.asarray(wave, dtype=np.float32)
    frames = _frames(wave, FRAME)  # (F, 400)
    power = np.mean(frames.astype(np.float64) ** 2, axis=1)
    level_db = 10 * np.log10(power + 1e-12)
    loud_db = float(np.percentile(level_db, 95))
    speech = (level_db > loud_db - limits.speech_range_db) & (level_db > limits.floor_dbfs)

    spectrum = np.abs(np.fft.rfft(frames * np.hanning(FRAME).astype(np.float32), n=512)) ** 2  # (F, 257)
    mel = spectrum @ _mel_basis().T  # (F, 40)
    cepstra = np.log(mel + 1e-10) @ _dct_matrix().T  # (F, 12)
    band = spectrum[:, 3:193] + 1e-12  # ~100 Hz .. 6 kHz
    flatness = np.exp(np.mean(np.log(band), axis=1)) / np.mean(band, axis=1)

    # Normalised cross-correlation of each 40 ms frame with itself shifted (RAPT's NCCF): 1 for a
    # perfectly periodic frame, ~0.1 for white noise, whatever the level.
    long = _frames(wave, PITCH_FRAME).astype(np.float64)  # (F, 640)
    spectra = np.fft.rfft(long, n=1024)
    correlation = np.fft.irfft(spectra * np.conj(spectra), n=1024)[:, : MAX_LAG + 1]  # (F, lags)
    energy = np.cumsum(long**2, axis=1)
    total = energy[:, -1:]
    lags = np.arange(MAX_LAG + 1)
    head = energy[:, PITCH_FRAME - 1 - lags]  # energy of x[0 : N - lag]
    tail = total - np.concatenate([np.zeros((len(long), 1)), energy[:, : MAX_LAG]], axis=1)  # x[lag : N]
    nccf = correlation / np.sqrt(head * tail + 1e-12)
    best_lag = MIN_LAG + np.argmax(nccf[:, MIN_LAG:], axis=1)
    peak = nccf[np.arange(len(long)), best_lag]
    voiced = speech & (peak > limits.voiced_correlation)
    f0 = np.where(voiced, ANALYSIS_RATE / best_lag, np.nan)

    tail_samples = wave[-int(0.02 * ANALYSIS_RATE) :] if len(wave) else np.zeros(1, np.float32)
    end_level_db = float(10 * np.log10(np.mean(tail_samples.astype(np.float64) ** 2) + 1e-12))
    return Analysis(len(wave) / ANALYSIS_RATE, level_db, loud_db, speech, voiced, f0, cepstra, flatness, end_level_db)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# ---------------------------------------------------------------------------------------------
# Figures


def silence_figures(analysis: Analysis, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Lead and trail silence, the longest pause inside, and the speaking time (pauses capped)."""
    speech = analysis.speech.copy()
    for start, end in _runs(speech):  # a click of under 30 ms is not speech
        if end - start < 3:
            speech[start:end] = False
    where = np.flatnonzero(speech)
    if where.size == 0:
        return {"lead_silence": analysis.seconds, "trail_silence": 0.0, "longest_pause": 0.0, "speaking_seconds": 0.0}
    first, last = int(where[0]), int(where[-1])
    pauses = [(end - start) * FRAME_SECONDS for start, end in _runs(~speech[first : last + 1])]
    active = (last - first + 1) * FRAME_SECONDS
    excess = sum(max(0.0, pause - limits.pause_allowance) for pause in pauses)
    return {
        "lead_silence": round(first * FRAME_SECONDS, 3),
        "trail_silence": round(max(0.0, analysis.seconds - (last * HOP + FRAME) / ANALYSIS_RATE), 3),
        "longest_pause": round(max(pauses, default=0.0), 3),
        "speaking_seconds": round(active - excess, 3),
    }


def clipped_fraction(samples: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> float:
    """Share of samples in runs of >= clip_run samples pinned within 0.5% of the clip's peak."""
    wave = np.abs(np.asarray(samples, dtype=np.float32).reshape(-1))
    peak = float(wave.max()) if wave.size else 0.0
    if peak < 0.1:  # quiet audio cannot be overdriven
        return 0.0
    pinned = wave >= peak * 0.995
    clipped = sum(end - start for start, end in _runs(pinned) if end - start >= limits.clip_run)
    return clipped / wave.size


def repetition_figures(analysis: Analysis, limits: Limits = DEFAULT_LIMITS) -> dict:
    """The longest stretch of speech whose cepstra recur later in the clip: (seconds, lag seconds).

    The self-similarity matrix of the speech frames (cosine of mean-normalised cepstra) has a
    bright diagonal stripe at lag L when the audio at t repeats at t + L (Foote's self-similarity
    analysis). Pauses are taken out first: silence matches silence, and a repeat should not be
    broken by the pauses between its words. A stretch counts while its mean similarity over a
    0.2 s window stays above repeat_similarity. Seconds are of speech, pauses left out.
    """
    cepstra = analysis.cepstra[analysis.speech]
    cepstra = cepstra[: len(cepstra) // 2 * 2].reshape(-1, 2, N_CEPS).mean(axis=1)  # 20 ms hop: a quarter of the work
    count = len(cepstra)
    window = limits.repeat_window
    min_lag = max(1, int(round(limits.min_repeat_lag / (2 * FRAME_SECONDS))))
    if count <= min_lag + 2 * window:
        return {"repeat_seconds": 0.0, "repeat_lag": 0.0}
    centred = cepstra - cepstra.mean(axis=0)
    unit = (centred / (np.linalg.norm(centred, axis=1, keepdims=True) + 1e-9)).astype(np.float32)
    similarity = np.zeros((count, 2 * count), dtype=np.float32)
    similarity[:, :count] = unit @ unit.T
    # lagged[l, t] = similarity[t, t + l]: each diagonal as a row (zero past the end).
    lagged = np.lib.stride_tricks.as_strided(similarity, shape=(count, count),
                                             strides=(similarity.strides[1], similarity.strides[0] + similarity.strides[1]))
    lagged = lagged[min_lag:]
    sums = np.cumsum(np.pad(lagged, ((0, 0), (1, 0))), axis=1, dtype=np.float64)
    mean = (sums[:, window:] - sums[:, :-window]) / window  # (lags, count - window + 1)
    above = mean > limits.repeat_similarity
    filled = np.cumsum(above, axis=1)
    reset = np.maximum.accumulate(np.where(~above, filled, 0), axis=1)
    run = filled - reset
    if not run.any():
        return {"repeat_seconds": 0.0, "repeat_lag": 0.0}
    lag, _ = np.unravel_index(int(np.argmax(run)), run.shape)
    frames = int(run.max()) + window - 1
    return {"repeat_seconds": round(frames * 2 * FRAME_SECONDS, 3), "repeat_lag": round((lag + min_lag) * 2 * FRAME_SECONDS, 3)}


def voice_features(analysis: Analysis) -> dict | None:
    """What says who is speaking: the mean cepstrum over voiced frames and the median pitch.

    Long-term cepstral means (the vocal tract's average shape) and the median F0 are the classic
    text-independent speaker measures; they need no model weights and come from frames already
    computed. None under a second of voiced speech ("Chapter One."): too few sounds to average.
    """
    if analysis.voiced.sum() < MIN_VOICED_FRAMES:
        return None
    return {
        "cepstrum": analysis.cepstra[analysis.voiced].mean(axis=0).round(4).tolist(),
        "pitch_hz": round(float(np.nanmedian(analysis.f0)), 2),
    }


@dataclass(frozen=True)
class VoiceProfile:
    """The voice's own measure (voice_features over its clips), to report each chunk against."""

    cepstrum: tuple
    pitch_hz: float


def voice_profile(clips: list, sample_rate: int) -> VoiceProfile | None:
    """The mean of voice_features over reference clips (any rate, mono); None if none has voiced speech."""
    found = [voice_features(analyse(to_analysis_rate(clip, sample_rate))) for clip in clips]
    found = [features for features in found if features is not None]
    if not found:
        return None
    cepstrum = np.mean([features["cepstrum"] for features in found], axis=0)
    pitch = float(np.exp(np.mean([math.log(features["pitch_hz"]) for features in found])))
    return VoiceProfile(tuple(round(float(v), 4) for v in cepstrum), round(pitch, 2))


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def chunk_figures(samples, sample_rate: int, text: str, *, stopped: bool | None = None, clvp_score: float | None = None,
                  voice: VoiceProfile | None = None, recogniser=None, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Every figure of one take. `recogniser` (asr.py) adds the speech-recognition round trip."""
    raw = np.asarray(samples.detach().cpu().numpy() if hasattr(samples, "detach") else samples, dtype=np.float32).reshape(-1)
    wave = to_analysis_rate(raw, sample_rate)
    analysis = analyse(wave, limits)
    words = spoken_words(text)
    phones, unknown = phone_count(words)
    echo_phones, _ = phone_count(repeated_words(words))
    speech_frames = int(analysis.speech.sum())
    figures = {
        "seconds": round(len(raw) / sample_rate, 3),
        "stopped": stopped,
        "clvp_score": None if clvp_score is None or math.isnan(clvp_score) else round(float(clvp_score), 4),
        "peak": round(float(np.abs(raw).max()) if raw.size else 0.0, 4),
        "clipped_fraction": round(clipped_fraction(raw, limits), 6),
        "loud_dbfs": round(analysis.loud_db, 2),
        "voiced_fraction": round(float(analysis.voiced.sum()) / speech_frames, 4) if speech_frames else 0.0,
        "voiced_seconds": round(float(analysis.voiced.sum()) * FRAME_SECONDS, 2),
        "flatness": round(float(np.median(analysis.flatness[analysis.speech])), 4) if speech_frames else 1.0,
        "end_level_db": round(analysis.end_level_db - analysis.loud_db, 2),
        "words": len(words),
        "phones": phones,
        "unknown_words": unknown,
        "echo_phones": echo_phones,
        **silence_figures(analysis, limits),
        **repetition_figures(analysis, limits),
    }
    figures["speech_rate"] = round(phones / figures["speaking_seconds"], 3) if figures["speaking_seconds"] > 0 else None
    features = voice_features(analysis)
    if features is not None:
        figures.update(pitch_hz=features["pitch_hz"], cepstrum=features["cepstrum"])
        if voice is not None:
            figures["voice_similarity"] = round(cosine(features["cepstrum"], voice.cepstrum), 4)
            figures["pitch_shift"] = round(12 * math.log2(features["pitch_hz"] / voice.pitch_hz), 3)
    if recogniser is not None:
        figures.update(recogniser.score(wave, words))
    return figures


# ---------------------------------------------------------------------------------------------
# Verdicts


def judge(figures: dict, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The chunk-local checks a take fails, in LOCAL_CHECKS order (its raw verdict)."""
    failed = set()
    if figures.get("stopped") is False:
        failed.add("no_stop")
    if figures["clipped_fraction"] > limits.max_clipped_fraction:
        failed.add("clipping")
    if (figures["speaking_seconds"] <= 0 or figures["voiced_fraction"] < limits.min_voiced_fraction
            or figures["flatness"] > limits.max_flatness):
        failed.add("not_speech")
    if (figures["longest_pause"] > limits.max_pause or figures["lead_silence"] > limits.max_lead
            or figures["trail_silence"] > limits.max_trail):
        failed.add("silence")
    echo = figures["echo_phones"] / (0.5 * (limits.min_rate + limits.max_rate))  # seconds the text itself repeats
    if figures["repeat_seconds"] > limits.max_repeat + 1.5 * echo:
        failed.add("repetition")
    if figures["end_level_db"] > limits.truncated_level_db and figures["trail_silence"] < 0.05:
        failed.add("truncated")
    speaking, phones = figures["speaking_seconds"], figures["phones"]
    if phones and speaking > 0 and not (phones / limits.max_rate - limits.rate_slack <= speaking
                                        <= phones / limits.min_rate + limits.rate_slack):
        failed.add("duration")
    recall = figures.get("asr_recall")
    if recall is not None and figures.get("asr_words", 0) >= limits.min_asr_words and recall < limits.min_recall:
        failed.add("asr")
    return [check for check in LOCAL_CHECKS if check in failed]


def _robust_z(values: np.ndarray) -> tuple[float, float]:
    """(median, scale): the MAD scaled to a normal's standard deviation, never zero."""
    median = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - median)))
    return median, max(scale, 1e-6)


def judge_book(all_figures: list[dict], limits: Limits = DEFAULT_LIMITS) -> list[list[str]]:
    """Book-relative verdicts for every chunk: a CLVP score far below the book's, a voice unlike the book's.

    Against the whole book rather than a running window, so a chunk's verdict does not depend on
    the order chunks were rendered in. The voice is judged against the book's own median, not the
    reference clips directly: the clips' microphone and room shift every chunk alike.
    """
    verdicts: list[list[str]] = [[] for _ in all_figures]
    scores = [(i, f["clvp_score"]) for i, f in enumerate(all_figures) if f.get("clvp_score") is not None]
    if len(scores) >= 5:
        median, scale = _robust_z(np.array([s for _, s in scores]))
        for i, score in scores:
            if (median - score) / scale > limits.book_z and median - score > limits.min_clvp_gap:
                verdicts[i].append("clvp")
    voiced = [(i, f) for i, f in enumerate(all_figures) if f.get("cepstrum") is not None and f.get("pitch_hz")
              and f.get("voiced_seconds", math.inf) >= MIN_VOICED_FRAMES * FRAME_SECONDS]
    if len(voiced) >= 5:
        pitches = np.array([12 * math.log2(f["pitch_hz"]) for _, f in voiced])
        centre = np.median(np.array([f["cepstrum"] for _, f in voiced]), axis=0)
        similarity = np.array([cosine(f["cepstrum"], centre) for _, f in voiced])
        pitch_median, pitch_scale = _robust_z(pitches)
        sim_median, sim_scale = _robust_z(similarity)
        for (i, _), pitch, sim in zip(voiced, pitches, similarity):
            pitch_off = abs(pitch - pitch_median) > max(limits.book_z * pitch_scale, limits.min_pitch_gap)
            timbre_off = sim_median - sim > max(limits.book_z * sim_scale, limits.min_timbre_gap)
            if pitch_off or timbre_off:
                verdicts[i].append("voice")
    return verdicts


def book_voice_figures(all_figures: list[dict]) -> list[dict]:
    """Each chunk's similarity to the book's median voice and its pitch offset from the book's median."""
    voiced = [bool(f.get("cepstrum") is not None and f.get("pitch_hz")) for f in all_figures]
    chosen = [f for f, ok in zip(all_figures, voiced) if ok]
    if not chosen:
        return [{} for _ in all_figures]
    centre = np.median(np.array([f["cepstrum"] for f in chosen]), axis=0)
    median_pitch = float(np.median([12 * math.log2(f["pitch_hz"]) for f in chosen]))
    return [
        {"book_voice_similarity": round(cosine(f["cepstrum"], centre), 4),
         "book_pitch_offset": round(12 * math.log2(f["pitch_hz"]) - median_pitch, 3)} if ok else {}
        for f, ok in zip(all_figures, voiced)
    ]


def attribute(raw: list[str]) -> tuple[list[str], list[str]]:
    """(causes, also): the flags no other raised flag explains, and the ones that one does."""
    present = set(raw)
    causes: list[str] = []
    for check in CHECKS:
        if check in present and not any(check in EXPLAINS.get(cause, ()) for cause in causes):
            causes.append(check)
    also = [check for check in CHECKS if check in present and check not in causes]
    return causes, also


@dataclass(order=True)
class TakeRank:
    """Sort key of a take: fewer failed checks, then the higher CLVP score, then the earlier attempt."""

    failed: int
    minus_score: float
    attempt: int = field(compare=True)


def take_rank(flags: list[str], clvp_score: float | None, attempt: int) -> TakeRank:
    score = clvp_score if clvp_score is not None and not math.isnan(clvp_score) else 0.0
    return TakeRank(len(flags), -score, attempt)
