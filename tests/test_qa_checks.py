"""The quality checks on real speech: espeak-ng clips pass, each synthetic defect is flagged by its own check.

Budget (2-core VM, CPU time): the corpus ~5 s of espeak-ng, the signal checks ~15 s and pocketsphinx
~30 s for its ~680 s of audio; about 1 to 2.5 minutes of wall time, depending on the machine's load.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest

from tests.qa_corpus import DEFECTS, ESPEAK, MEANT, RATE, build_corpus, voice_clips
from tutortoietts import qa

needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def judged():
    """Every corpus clip measured and judged as a chunk of one book, with the time each part took."""
    from tutortoietts.asr import PocketsphinxRecogniser

    started = time.perf_counter()
    clips = build_corpus(seed=0)
    voice = qa.voice_profile(voice_clips(), RATE)
    built = time.perf_counter() - started
    recogniser = PocketsphinxRecogniser()
    figures, check_seconds, asr_seconds = [], 0.0, 0.0
    for clip in clips:
        start = time.process_time()  # CPU time: the VM is shared, wall time says more about the neighbours
        measured = qa.chunk_figures(clip.samples, RATE, clip.text, voice=voice)
        check_seconds += time.process_time() - start
        start = time.process_time()
        measured.update(recogniser.score(qa.to_analysis_rate(clip.samples, RATE), qa.spoken_words(clip.text)))
        asr_seconds += time.process_time() - start
        figures.append(measured)
    recogniser.close()
    book = qa.judge_book(figures)
    raw = [qa.judge(measured) + extra for measured, extra in zip(figures, book)]
    audio = sum(len(clip.samples) for clip in clips) / RATE
    print(f"\n[qa] corpus {len(clips)} clips, {audio:.0f} s of audio: built in {built:.1f} s (wall); CPU time: checks "
          f"{check_seconds:.1f} s ({100 * check_seconds / audio:.1f}% of real time), pocketsphinx {asr_seconds:.1f} s "
          f"({100 * asr_seconds / audio:.1f}%)")
    return clips, figures, raw


def confusion(clips, verdicts) -> dict[str, Counter]:
    """kind -> how many of its clips each check flagged."""
    table: dict[str, Counter] = {}
    for clip, flags in zip(clips, verdicts):
        table.setdefault(clip.kind, Counter()).update(flags)
    return table


def print_table(title, clips, verdicts) -> None:
    table = confusion(clips, verdicts)
    counts = Counter(clip.kind for clip in clips)
    print(f"\n[qa] {title}: rows = clip kind (count), columns = check, cells = clips it flagged")
    print("kind".ljust(14) + "".join(check[:10].rjust(11) for check in qa.CHECKS))
    for kind in ("clean", *DEFECTS):
        print(f"{kind} ({counts[kind]})".ljust(14) + "".join(str(table.get(kind, Counter())[check]).rjust(11) for check in qa.CHECKS))


@needs_espeak
def test_corpus_is_big_and_varied_enough(judged):
    clips, _, _ = judged
    kinds = Counter(clip.kind for clip in clips)
    assert kinds["clean"] >= 40
    assert sum(kinds[kind] for kind in DEFECTS) >= 40
    assert all(kinds[kind] >= 6 for kind in DEFECTS), kinds
    assert len({clip.text for clip in clips}) >= 40


@needs_espeak
def test_each_defect_is_flagged_by_its_own_check_and_clean_speech_passes(judged):
    clips, figures, raw = judged
    causes = [qa.attribute(flags)[0] for flags in raw]
    print_table("raw verdicts (every check that fired)", clips, raw)
    print_table("causes (flags no other flag explains: what qa reports)", clips, causes)
    defects = [(clip, cause) for clip, cause in zip(clips, causes) if clip.kind != "clean"]
    flagged = [clip for clip, cause in defects if MEANT[clip.kind] in cause]
    exact = [clip for clip, cause in defects if cause == [MEANT[clip.kind]]]
    clean = [(clip, flags) for clip, flags in zip(clips, raw) if clip.kind == "clean"]
    clean_flagged = [(clip.text, flags) for clip, flags in clean if flags]
    misses = [(clip.kind, clip.text[:40], cause) for clip, cause in defects if cause != [MEANT[clip.kind]]]
    print(f"[qa] defects flagged by their check: {len(flagged)}/{len(defects)}; by it alone: {len(exact)}/{len(defects)}; "
          f"clean clips flagged: {len(clean_flagged)}/{len(clean)}")
    for miss in misses:
        print("[qa] miss:", miss)
    for text, flags in clean_flagged:
        print("[qa] clean flagged:", text[:50], flags)
    assert len(flagged) >= 0.95 * len(defects)
    assert len(exact) >= 0.95 * len(defects)
    assert len(clean_flagged) <= 0.05 * len(clean)


@needs_espeak
def test_figures_separate_the_defects_by_a_margin(judged):
    """The numbers behind the verdicts, so a drifting measure shows before a verdict flips."""
    clips, figures, _ = judged
    by_kind: dict[str, list[dict]] = {}
    for clip, measured in zip(clips, figures):
        by_kind.setdefault(clip.kind, []).append(measured)
    clean = by_kind["clean"]
    assert min(f["voiced_fraction"] for f in clean) > 0.5 > 0.05 > max(f["voiced_fraction"] for f in by_kind["noise"])
    assert max(f["flatness"] for f in clean + by_kind["clipped"]) < 0.1 < 0.4 < min(f["flatness"] for f in by_kind["noise"])
    assert max(f["clipped_fraction"] for f in clean) == 0.0
    assert min(f["clipped_fraction"] for f in by_kind["clipped"]) > 0.01
    assert max(f["longest_pause"] for f in clean) < 1.0 and min(f["longest_pause"] for f in by_kind["silence"]) > 3.9
    assert max(f["repeat_seconds"] for f in clean) < 1.2 < 2.0 < min(f["repeat_seconds"] for f in by_kind["loop"])
    assert max(f["end_level_db"] for f in clean) < -40 and min(f["end_level_db"] for f in by_kind["cut"]) > -10
    assert min(f["asr_recall"] for f in clean) > 0.6 > max(f["asr_recall"] for f in by_kind["different"])
    assert all(6 < f["speech_rate"] < 25 for f in clean)
    assert min(abs(f["pitch_shift"]) for f in by_kind["voice"]) > 5 > max(abs(f["pitch_shift"]) for f in clean)


def test_real_human_speech_passes_the_signal_checks():
    """The voice clips tortoise-tts ships (real recordings, no transcripts): no signal check fires."""
    import importlib.resources

    import soundfile

    root = importlib.resources.files("tortoise").joinpath("voices")
    checked = []
    for voice in sorted(entry.name for entry in root.iterdir() if entry.is_dir()):
        clips = sorted(entry for entry in root.joinpath(voice).iterdir() if entry.name.endswith(".wav"))
        if not clips:
            continue
        with importlib.resources.as_file(clips[0]) as path:
            wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
        figures = qa.chunk_figures(wave.mean(axis=1), rate, "")  # no text: duration and asr have nothing to judge
        flags = qa.judge(figures)
        checked.append((voice, flags))
        print(f"[qa] {voice}: voiced {figures['voiced_fraction']:.2f}, flatness {figures['flatness']:.3f}, "
              f"repeat {figures['repeat_seconds']:.2f} s, "
              f"pause {figures['longest_pause']:.2f} s, end {figures['end_level_db']:.1f} dB -> {flags}")
    assert len(checked) >= 15
    assert [item for item in checked if item[1]] == []


# ---------------------------------------------------------------------------------------------
# The pure functions on synthetic input


def tone(seconds: float, frequency: float = 150.0, rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """A buzz with harmonics: periodic like a voiced vowel."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * sum(np.sin(2 * np.pi * frequency * k * t) / k for k in range(1, 8)) / 2).astype(np.float32)


def syllables(count: int, rate: int = 16000) -> np.ndarray:
    """`count` 0.2 s voiced bursts with 0.1 s gaps: speech-like level and voicing, ends in silence."""
    parts = []
    for index in range(count):
        burst = tone(0.2, 120 + 10 * (index % 5), rate) * np.hanning(int(0.2 * rate)).astype(np.float32)
        parts += [burst, np.zeros(int(0.1 * rate), np.float32)]
    return np.concatenate(parts)


def test_no_stop_flag_comes_from_the_autoregressive_result():
    wave = syllables(12)
    assert "no_stop" in qa.judge(qa.chunk_figures(wave, 16000, "", stopped=False))
    assert "no_stop" not in qa.judge(qa.chunk_figures(wave, 16000, "", stopped=True))
    assert "no_stop" not in qa.judge(qa.chunk_figures(wave, 16000, "", stopped=None))  # not recorded: no verdict


def test_silence_figures_measure_lead_trail_and_pauses():
    rate = 16000
    quiet = lambda seconds: np.zeros(int(seconds * rate), np.float32)  # noqa: E731
    wave = np.concatenate([quiet(1.5), tone(1.0), quiet(2.5), tone(1.0), quiet(0.5)])
    figures = qa.chunk_figures(wave, rate, "")
    assert figures["lead_silence"] == pytest.approx(1.5, abs=0.03)
    assert figures["longest_pause"] == pytest.approx(2.5, abs=0.05)
    assert figures["trail_silence"] == pytest.approx(0.5, abs=0.05)
    # Speaking time counts each pause up to pause_allowance: 1 + 0.5 + 1.
    assert figures["speaking_seconds"] == pytest.approx(2.5, abs=0.05)
    assert {"silence"} <= set(qa.judge(figures))


def test_clipping_counts_runs_at_the_peak_only():
    wave = tone(2.0)
    assert qa.clipped_fraction(wave) == 0.0
    assert qa.clipped_fraction(np.clip(wave * 5, -1, 1)) > 0.05
    assert qa.clipped_fraction(np.zeros(1000, np.float32)) == 0.0  # silence is not clipping


def test_repetition_finds_a_loop_and_allows_what_the_text_repeats():
    rng = np.random.default_rng(0)
    phrase = np.concatenate([tone(0.25, f) for f in rng.uniform(100, 300, 8)])  # 2 s of changing pitch
    looped = np.concatenate([phrase, np.zeros(1600, np.float32), phrase, np.zeros(1600, np.float32), phrase])
    figures = qa.repetition_figures(qa.analyse(looped))
    assert figures["repeat_seconds"] > 3.5  # two copies follow the first
    assert figures["repeat_lag"] == pytest.approx(2.0, abs=0.15)
    assert qa.repeated_words("it was the best of times it was the worst of times".split()) == ["it", "was", "the"]
    assert qa.repeated_words("one two three".split()) == []


def test_noise_is_not_speech_but_a_buzz_is_voiced():
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    assert qa.chunk_figures(noise, 16000, "")["voiced_fraction"] < 0.05
    assert "not_speech" in qa.judge(qa.chunk_figures(noise, 16000, ""))
    assert qa.chunk_figures(syllables(10), 16000, "")["voiced_fraction"] > 0.8
    assert "not_speech" in qa.judge(qa.chunk_figures(np.zeros(16000, np.float32), 16000, ""))  # nothing at all


def test_duration_bounds_follow_the_texts_phones():
    words = qa.spoken_words("The committee will meet again on Tuesday.")
    phones, unknown = qa.phone_count(words)
    assert (phones, unknown) == (25, 0)  # DH AH | K AH M IH T IY | W IH L | M IY T | AH G EH N | AA N | T UW Z D IY
    wave = syllables(7)  # ~2 s of speaking: 25 phones is 12.5/s, plausible
    assert "duration" not in qa.judge(qa.chunk_figures(wave, 16000, "The committee will meet again on Tuesday."))
    assert "duration" in qa.judge(qa.chunk_figures(syllables(40), 16000, "The committee will meet again on Tuesday."))
    assert "duration" in qa.judge(qa.chunk_figures(syllables(7), 16000, " ".join(["committee"] * 30)))
    assert qa.spoken_words("Dr. Lee paid $5.") == ["doctor", "lee", "paid", "five", "dollars"]


def test_book_checks_find_outliers_against_the_whole_book():
    rng = np.random.default_rng(2)
    figures = [{"clvp_score": float(s), "cepstrum": list(rng.normal(0, 0.05, 12) + 1.0), "pitch_hz": float(p)}
               for s, p in zip(rng.normal(5.0, 0.3, 40), rng.normal(110, 3, 40))]
    figures[7]["clvp_score"] = 1.0  # far below the book
    figures[9]["pitch_hz"] = 220.0  # an octave up
    figures[11]["cepstrum"] = list(-np.ones(12))  # another timbre
    verdicts = qa.judge_book(figures)
    flagged = {i: v for i, v in enumerate(verdicts) if v}
    assert flagged == {7: ["clvp"], 9: ["voice"], 11: ["voice"]}
    assert qa.judge_book(figures[:3]) == [[], [], []]  # too few chunks to call anything an outlier
    nan_scores = [{"clvp_score": None} for _ in range(10)]  # one candidate per chunk: no score
    assert qa.judge_book(nan_scores) == [[] for _ in range(10)]


def test_attribute_names_causes_and_keeps_consequences():
    assert qa.attribute(["repetition", "duration", "asr"]) == (["repetition"], ["duration", "asr"])
    assert qa.attribute(["not_speech", "truncated", "asr", "voice"]) == (["not_speech"], ["truncated", "asr", "voice"])
    assert qa.attribute(["clipping", "not_speech"]) == (["clipping"], ["not_speech"])
    assert qa.attribute(["no_stop", "not_speech", "duration"]) == (["no_stop", "not_speech"], ["duration"])
    assert qa.attribute(["duration", "asr"]) == (["duration", "asr"], [])
    assert qa.attribute([]) == ([], [])


def test_best_take_fewest_flags_then_score_then_earliest():
    ranks = [qa.take_rank(["asr"], 2.0, 1), qa.take_rank([], 1.0, 2), qa.take_rank([], 3.0, 3), qa.take_rank([], 3.0, 4)]
    assert min(ranks).attempt == 3
    assert min([qa.take_rank(["a"], None, 1), qa.take_rank(["a"], math.nan, 2)]).attempt == 1


def test_asr_scores_words_in_order():
    from tutortoietts.asr import word_scores

    scores = word_scores(["the", "cat", "sat"], ["the", "cat", "sat"])
    assert scores["wer"] == 0 and scores["asr_recall"] == 1
    scores = word_scores(["the", "cat", "sat", "down"], ["the", "dog", "sat"])
    assert scores["wer"] == pytest.approx(0.5) and scores["asr_recall"] == pytest.approx(0.5)
    assert word_scores([], ["x"]) == {"asr_words": 0}
