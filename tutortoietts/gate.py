"""The quality gate in the render loop: every take is checked (qa.py), a chunk that fails a check is
rendered again with seeds derived from (chunk seed, attempt), and its best take is kept.

A chunk is saved with its first take whatever the checks say, so a kill never loses it; a later
take replaces it only when it is better (fewer failed checks, then a higher CLVP score). Retakes
come in rounds after the first takes (a renderer may batch or spread a round as it likes).

A chunk whose first take fails with a check in common with the first takes of the two chunks
before it (for the book's first two chunks: the other two of the first three) is not retried:
that is the model or the voice, not bad luck. Random weights fail every chunk alike, so a book
on them is rendered once, not three times; one notice says so. A chunk that fails unlike its
neighbours gets its retries.

Every decision depends only on recorded takes, and each take only on (chunk, attempt): a run
killed anywhere and resumed continues the same series and writes the same bytes. Checks that
compare a chunk with the whole book (CLVP, voice) are judged by `tutortoietts qa` afterwards, not
here, so that no chunk's audio depends on how the other chunks sounded.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tutortoietts import qa
from tutortoietts.cache import digest
from tutortoietts.errors import UserError
from tutortoietts.jobs import ChunkRow, storage_error
from tutortoietts.renderers import RenderTask


@dataclass(frozen=True)
class GateOptions:
    retries: int = 2  # takes after the first for a chunk that fails a check
    asr: bool = False  # pocketsphinx round trip on every take
    asr_model: Path | None = None  # a local faster-whisper model instead of pocketsphinx

    def __post_init__(self):
        if not isinstance(self.retries, int) or self.retries < 0:
            raise UserError(f"--retries must be 0 or more, got {self.retries!r}")


@dataclass
class RunCounts:
    """What this run did with its pending chunks."""

    rendered: int = 0  # every stage computed
    ar_cache: int = 0  # autoregressive result from the cache, audio computed
    audio_cache: int = 0  # audio from the cache
    failed: list[tuple[ChunkRow, str]] = field(default_factory=list)
    audio_seconds: float = 0.0  # audio this run produced

    def count(self, source: str) -> None:
        if source == "rendered":
            self.rendered += 1
        elif source == "ar-cache":
            self.ar_cache += 1
        elif source == "audio-cache":
            self.audio_cache += 1


def take_seed(chunk_seed: int, attempt: int) -> int:
    """Attempt 1 is the chunk's own seed; attempt k > 1 a seed derived from (chunk seed, k)."""
    if attempt == 1:
        return chunk_seed
    data = hashlib.sha256(f"{chunk_seed}\x00take\x00{attempt}".encode()).digest()
    return int.from_bytes(data[:8], "big") % (2**31)


def take_keys(ar_key: str | None, audio_key: str, attempt: int) -> tuple[str | None, str]:
    """(AR key, audio key) of a take: the chunk's own for attempt 1, else derived from them and k
    (the chunk's keys hold every input but the seed, and the seed is a function of k)."""
    if attempt == 1:
        return ar_key, audio_key
    ar = digest({"stage": "ar-take", "of": ar_key, "attempt": attempt}) if ar_key is not None else None
    return ar, digest({"stage": "audio-take", "of": audio_key, "attempt": attempt})


class Checker:
    """Measures takes; the voice's profile and the recogniser are made once, on first use."""

    def __init__(self, plan, options: GateOptions):
        self.plan, self.options = plan, options
        self._recogniser = None
        self._voice = None
        self._voice_done = False

    @property
    def asr_name(self) -> str | None:
        if self.options.asr_model is not None:
            return f"faster-whisper:{Path(self.options.asr_model).name}"
        return "pocketsphinx" if self.options.asr else None

    def recogniser(self):
        if self._recogniser is None and self.asr_name is not None:
            from tutortoietts.asr import make_recogniser

            self._recogniser = make_recogniser(self.options.asr, self.options.asr_model)
        return self._recogniser

    def voice(self):
        if not self._voice_done:
            self._voice_done = True
            if not self.plan.voice.is_random:
                from tutortoietts.voices import CONDITIONING_SAMPLE_RATE, load_voice_clips

                self._voice = qa.voice_profile(load_voice_clips(self.plan.voice), CONDITIONING_SAMPLE_RATE)
        return self._voice

    def measure(self, text: str, samples, sample_rate: int, ar) -> tuple[list[str], dict, float]:
        """(failed checks, figures, seconds it took) for one take."""
        start = time.perf_counter()
        stopped = clvp = None
        if ar is not None:
            if getattr(ar, "stopped", None) is not None:
                stopped = bool(ar.stopped[ar.chosen])
            if ar.scores is not None and len(ar.scores) > 1:
                clvp = float(ar.scores[ar.chosen])
        figures = qa.chunk_figures(samples, sample_rate, text, stopped=stopped, clvp_score=clvp, voice=self.voice(),
                                   recogniser=self.recogniser())
        figures["asr"] = self.asr_name
        return qa.judge(figures), figures, time.perf_counter() - start

    def close(self) -> None:
        if self._recogniser is not None:
            self._recogniser.close()


def window(position: int, count: int) -> list[int]:
    """The chunks a chunk's first take is compared with: the two before it, or for the first two
    chunks of the book the other two of the first three; none in a book of fewer than three."""
    if count < 3:
        return []
    return [position - 2, position - 1] if position >= 2 else [i for i in range(3) if i != position]


def systemic_checks(flags: list[str], others: list[list[str] | None]) -> list[str]:
    """The checks a failed first take shares with the first takes of its window ([] when one of
    them passed or is unknown (None), or there is no window)."""
    if not flags or not others or any(not other for other in others):
        return []
    shared = set(flags).intersection(*(set(other) for other in others))
    return qa.attribute([check for check in qa.CHECKS if check in shared])[0]


@dataclass(eq=False)  # compared by identity
class Series:
    """One chunk's takes: attempts first..last; the best so far is the chunk's file."""

    row: ChunkRow
    ar_key: str | None
    first: int
    last: int
    next: int
    best: dict | None = None  # the take record whose audio the chunk file holds
    saved: bool = False  # the chunk counts as done (progress), whatever take it holds


def render_gated(job, plan, request, cache, renderer, pending: list[ChunkRow], tracker, options: GateOptions,
                 first_attempts: dict[str, int] | None = None, ar_keys: dict[str, str] | None = None,
                 systemic_rule: bool = True):
    """Render every pending chunk through the gate; returns RunCounts.

    A chunk is saved with its first take whatever the checks say (so a kill never loses it), and a
    better take replaces it. first_attempts: chunk name -> the attempt its series starts at (redo).
    ar_keys: extra audio key -> AR key entries (redo --text rows the plan does not hold).
    systemic_rule (generate): a chunk whose first take fails like the first takes of its window
    keeps that take without retries; series an interrupted run left open are continued.
    """
    counts = RunCounts()
    checker = Checker(plan, options)

    def stored_call(action):
        try:
            return action()
        except (OSError, sqlite3.OperationalError) as error:
            raise storage_error(error, plan.job_dir, tracker.done) from None

    read_cache = not request.force
    keys = {**plan.ar_keys, **(ar_keys or {})}
    first_attempts = first_attempts or {}
    order = job.rows()
    place = {row.name: position for position, row in enumerate(order)}
    series: dict[str, Series] = {}
    for row in pending:
        first = first_attempts.get(row.name, 1)
        if first == 1:
            job.forget_takes(row.cache_key)  # its audio is gone (or --force): its takes start over, as they were
        series[row.name] = Series(row, keys.get(row.cache_key), first, first + options.retries, first)
    recorded: dict[str, list[dict]] = {}
    for take in job.takes():
        recorded.setdefault(take["cache_key"], []).append(take)
    if systemic_rule and recorded:  # a job the gate has rendered (a rebuilt database holds no takes: left as is)
        for row in order:
            if row.name not in series and row.status == "done" and row.cache_key not in recorded:
                take = stored_call(lambda: recover_first_take(job, row, keys.get(row.cache_key), cache, checker))
                if take is not None:
                    recorded[row.cache_key] = [take]
    if systemic_rule:
        for row in order:
            if row.name not in series and row.status == "done":
                opened = open_series(row, recorded.get(row.cache_key, []), options.retries, keys.get(row.cache_key))
                if opened is not None:
                    series[row.name] = opened
    waiting = object()
    first_flags = {}
    for row in order:
        take = next((t for t in recorded.get(row.cache_key, []) if t["attempt"] == 1), None)
        pending_first = row.name in series and series[row.name].first == 1 and series[row.name].next == 1
        first_flags[row.name] = waiting if pending_first else (take["flags"] if take else None)
    undecided: list[Series] = [s for s in series.values() if s.next == 2 and systemic_rule and s.last > 1]
    stats = {"retakes": 0, "still_failing": 0, "told": False}

    def close(s: Series) -> None:
        if s.best is not None and s.best["flags"]:
            stats["still_failing"] += 1
        series.pop(s.row.name, None)

    def decide() -> None:
        """Retry, or not, each chunk whose first take failed, once its window's first takes are known."""
        for s in list(undecided):
            others = [first_flags[order[i].name] for i in window(place[s.row.name], len(order))]
            if any(flags is waiting for flags in others):
                continue
            undecided.remove(s)
            shared = systemic_checks(first_flags[s.row.name], others)
            if not shared:
                continue  # its next take comes in the next round
            if not stats["told"]:
                stats["told"] = True
                tracker.notices([
                    f"quality gate: chunk {s.row.name} failed its first take on {', '.join(shared)} like the chunks "
                    f"around it: that is the model or the voice (random weights do this), not bad luck, so chunks "
                    f"that fail alike keep their first take instead of {options.retries} more each"])
            close(s)

    def handle(s: Series, attempt: int, samples, rate: int, ar, source: str, render_seconds: float) -> None:
        flags, figures, check_seconds = checker.measure(s.row.text, samples, rate, ar)
        figures["series_first"] = s.first
        take = take_record(s.row, s.ar_key, attempt, flags, figures, source, render_seconds, check_seconds, samples)
        if s.best is None or qa.take_rank(flags, figures.get("clvp_score"), attempt) < qa.take_rank(
                s.best["flags"], s.best["figures"].get("clvp_score"), s.best["attempt"]):
            stored_call(lambda: job.write_chunk(s.row, samples, rate, render_seconds, take=take))
            s.best = take
            if not s.saved:
                s.saved = True
                counts.count(source)
                counts.audio_seconds += len(samples) / rate
                tracker.notices(cache.take_notices())
                tracker.chunk(s.row, source, counts.audio_seconds)
        else:
            stored_call(lambda: job.record_take(take))
        s.next = attempt + 1
        if attempt == 1 and s.first == 1:
            first_flags[s.row.name] = flags
            if flags and systemic_rule and s.last > 1:
                undecided.append(s)
        if not flags or (s.next > s.last and s not in undecided):
            close(s)
        decide()

    def run_round(active: list[Series]) -> None:
        tasks = []
        for s in active:
            attempt = s.next
            ar_key, audio_key = take_keys(s.ar_key, s.row.cache_key, attempt)
            start = time.perf_counter()
            cached = cache.get_audio(audio_key) if read_cache else None
            ar = cache.get_ar(ar_key) if ar_key is not None and read_cache else None
            if cached is not None:
                handle(s, attempt, cached[0], cached[1], ar, "audio-cache", time.perf_counter() - start)
                continue
            tasks.append(RenderTask(s.row.name, s.row.text, take_seed(s.row.seed, attempt), ar))
        if not tasks:
            return
        for result in renderer.render(tasks):
            s = series[result.task.name]
            attempt = s.next
            if attempt > s.first:
                stats["retakes"] += 1
            if result.error is not None:
                if s.best is not None:  # a later take failed to render: the best earlier one stays
                    close(s)
                    continue
                stored_call(lambda: job.mark_failed(s.row, result.error, result.seconds))
                counts.failed.append((s.row, result.error))
                tracker.chunk(s.row, "failed", counts.audio_seconds)
                series.pop(s.row.name)
                if first_flags.get(s.row.name) is waiting:
                    first_flags[s.row.name] = None  # no verdict: taken as passing by the chunks around it
                decide()
                continue
            ar_key, audio_key = take_keys(s.ar_key, s.row.cache_key, attempt)
            if result.computed_ar and ar_key is not None:
                cache.put_ar(ar_key, result.ar, plan.weights_fp)
            cache.put_audio(audio_key, result.samples, result.sample_rate, plan.weights_fp)
            handle(s, attempt, result.samples, result.sample_rate, result.ar,
                   "rendered" if result.computed_ar else "ar-cache", result.seconds)

    try:
        decide()  # series an interrupted run left undecided may be decidable already
        while series:
            active = [s for s in series.values() if s not in undecided]
            if not active:  # cannot happen: a round makes every first take known
                raise RuntimeError(f"quality gate: chunks {[s.row.name for s in undecided]} left undecided")
            run_round(active)
    finally:
        checker.close()
    if stats["still_failing"]:
        retried = f" after {stats['retakes']} retake(s)" if stats["retakes"] else ""
        tracker.notices([f"quality gate: {stats['still_failing']} chunk(s) still fail a check{retried}; "
                         f"`tutortoietts qa {plan.job_dir}` lists them, `tutortoietts redo {plan.job_dir} NAME` "
                         f"renders one again"])
    counts.retakes = stats["retakes"]
    return counts


def take_record(row: ChunkRow, ar_key: str | None, attempt: int, flags, figures, source, render_seconds,
                check_seconds, samples) -> dict:
    """A row of the takes table (jobs.py) for one take of `row`."""
    import numpy as np

    data = np.ascontiguousarray(samples.detach().float().cpu().numpy() if hasattr(samples, "detach") else samples,
                                dtype="<f4")
    return {"cache_key": row.cache_key, "attempt": attempt, "seed": take_seed(row.seed, attempt),
            "take_key": take_keys(ar_key, row.cache_key, attempt)[1], "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            "flags": flags, "figures": figures, "source": source,
            "render_seconds": None if render_seconds is None else round(render_seconds, 4),
            "check_seconds": round(check_seconds, 4)}


def recover_first_take(job, row: ChunkRow, ar_key: str | None, cache, checker: Checker) -> dict | None:
    """The take record of a done chunk that has none: a run killed between writing its first take and
    recording it. Measured again from the file (the same samples, so the same figures), with the
    autoregressive result from the cache when it is there (the stop token, the CLVP score)."""
    import soundfile

    path = job.directory / row.audio_path if row.audio_path else None
    if path is None or not path.is_file():
        return None
    samples, rate = soundfile.read(str(path), dtype="float32")
    ar = cache.get_ar(ar_key) if ar_key is not None else None
    flags, figures, check_seconds = checker.measure(row.text, samples, rate, ar)
    figures["series_first"] = 1
    take = take_record(row, ar_key, 1, flags, figures, "recovered", None, check_seconds, samples)
    job.record_take(take)
    return take


def open_series(row: ChunkRow, takes: list[dict], retries: int, ar_key: str | None) -> Series | None:
    """The series a done chunk's takes leave open (an interrupted run's): its best take still fails
    and it has had fewer than 1 + retries takes; None when it is over (or was a redo's)."""
    best = next((t for t in takes if t["sha256"] == row.checksum), None)
    if best is None or not best["flags"] or any(t["figures"].get("series_first", 1) != 1 for t in takes):
        return None
    attempts = max(t["attempt"] for t in takes)
    if attempts >= 1 + retries or any(not t["flags"] for t in takes):
        return None
    return Series(row, ar_key, 1, 1 + retries, attempts + 1, best=best, saved=True)
