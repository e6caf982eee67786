"""The render loop: plan chunks, take each from job state, cache or engine, then stitch the book."""

from __future__ import annotations

import errno
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tutortoietts.cache import ARResult, Cache, ar_key, audio_key, voice_key
from tutortoietts.errors import UserError
from tutortoietts.jobs import ChunkRow, Job, PlannedChunk, chunk_seed, default_job_dir
from tutortoietts.voices import Voice, find_voice, load_voice_clips, voice_fingerprint

FORMATS = ("m4b", "mp3", "wav")


class RenderFailed(UserError):
    """Some chunks raised; every other chunk is saved and the next run retries only these."""


@dataclass(frozen=True)
class RenderRequest:
    """Everything `generate` was asked for, before anything is resolved."""

    book: Path
    voice: str
    preset: str = "balanced_v2"
    overrides: dict = field(default_factory=dict)
    out_dir: Path | None = None
    fmt: str = "m4b"
    models_dir: Path | None = None
    device: str = "auto"
    precision: str | None = None
    seed: int = 0
    title: str | None = None
    author: str | None = None
    force: bool = False
    cache_dir: Path | None = None
    low_vram: bool = False  # networks on the GPU only during their stage
    encoding: str | None = None  # the manuscript's text encoding when it is not UTF-8/UTF-16


def real_time_factor(wall_seconds: float, audio_seconds: float) -> float | None:
    """Wall seconds per second of audio; None when there is no audio yet."""
    return wall_seconds / audio_seconds if audio_seconds > 0 else None


@dataclass(frozen=True)
class ProgressEvent:
    """One finished chunk (kind "chunk"), or the start / end of the loop, for a progress display."""

    kind: str  # "start" | "chunk" | "stitch" | "end" | "notice" (a repair or problem the user should know of)
    done: int  # chunks finished so far, this run's and earlier runs'
    total: int
    chapter_title: str = ""
    chunk_name: str = ""  # "<chapter>-<index>"
    source: str = ""  # "rendered" | "ar-cache" | "audio-cache" | "failed"
    audio_seconds: float = 0.0  # audio produced by this run so far
    wall_seconds: float = 0.0
    eta_seconds: float | None = None
    message: str = ""  # for "notice"

    @property
    def real_time_factor(self) -> float | None:
        """Compute seconds per second of audio (below 1 is faster than real time)."""
        return real_time_factor(self.wall_seconds, self.audio_seconds)


@dataclass
class RenderSummary:
    job_dir: Path
    outputs: list[Path]
    total: int
    rendered: int  # chunks the engine computed (whole or from cached AR results)
    from_ar_cache: int
    from_audio_cache: int
    already_done: int  # chunks the job folder already had
    audio_seconds: float  # the whole book's chunk audio (pauses not counted)
    run_audio_seconds: float  # chunk audio this run produced (rendered or from the cache)
    wall_seconds: float
    engine_loaded: bool

    @property
    def real_time_factor(self) -> float | None:
        """This run's wall time per second of audio it produced; None when it produced none."""
        return real_time_factor(self.wall_seconds, self.run_audio_seconds)


@dataclass
class Plan:
    """A request resolved: the book, its settings and voice, and every chunk with its key and seed."""

    book_path: Path
    book_hash: str
    book: object
    settings: object
    voice: Voice
    voice_fp: str
    models_dir: Path
    weights_fp: str
    job_dir: Path
    chunks: list[PlannedChunk]
    ar_keys: dict[str, str]  # audio key -> AR key


def resolve_weights(models_dir: Path | None) -> tuple[Path, str]:
    """The checkpoint folder and its fingerprint (missing weights are a UserError from checkpoints)."""
    from tutortoietts.engine.checkpoints import find_models_dir, weights_fingerprint

    directory = find_models_dir(models_dir)
    return directory, weights_fingerprint(directory)


def concrete_precision(settings, device: str):
    """Settings with precision "auto" replaced by what it means on this device, so cache keys
    never mix bf16 results from a GPU with fp32 ones from a CPU."""
    if settings.precision != "auto":
        return settings
    from tutortoietts.engine.pipeline import resolve_device, resolve_precision

    dtype, _ = resolve_precision("auto", resolve_device(device))
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return settings.replace(precision=names[dtype])


def plan_render(request: RenderRequest) -> Plan:
    """Everything that needs no network weights: cheap, and every user mistake surfaces here."""
    from tutortoietts.chunking import ChunkLimits, chunk_book
    from tutortoietts.engine.checkpoints import file_sha256
    from tutortoietts.manuscript import read_book
    from tutortoietts.settings import load_preset

    if request.fmt not in FORMATS:
        raise UserError(f"unknown --format {request.fmt!r}: use one of {', '.join(FORMATS)}")
    book = read_book(request.book, request.encoding)
    overrides = dict(request.overrides)
    if request.precision is not None:
        overrides["precision"] = request.precision
    settings = concrete_precision(load_preset(request.preset, **overrides), request.device)
    voice = find_voice(request.voice)
    voice_fp = voice_fingerprint(voice, request.seed)
    models_dir, weights_fp = resolve_weights(request.models_dir)
    # Chunks are sized for the generation length this run asks for.
    chunks = chunk_book(book, ChunkLimits(max_mel_tokens=settings.max_mel_tokens))
    if not chunks:
        raise UserError(f"manuscript has no text to read: {request.book}")
    planned, ar_keys = [], {}
    for chunk in chunks:
        seed = chunk_seed(request.seed, chunk.text)
        ar = ar_key(chunk.text, voice_fp, settings, seed, weights_fp)
        key = audio_key(ar, settings)
        ar_keys[key] = ar
        title = book.chapters[chunk.chapter].title
        planned.append(PlannedChunk(chunk.chapter, chunk.index, title, chunk.text, chunk.pause_after, seed, key))
    job_dir = Path(request.out_dir) if request.out_dir is not None else default_job_dir(request.book)
    return Plan(Path(request.book), file_sha256(request.book), book, settings, voice, voice_fp, models_dir, weights_fp,
                job_dir, planned, ar_keys)


# ---------------------------------------------------------------- engine stages


class LazyEngine:
    """Loads the networks on first use: a run whose chunks are all done or cached never loads them."""

    def __init__(self, plan: Plan, request: RenderRequest, cache: Cache, loader: Callable | None = None):
        self.plan, self.request, self.cache = plan, request, cache
        self._loader = loader
        self._tts = None
        self._voice = None
        self.setup_failed = False  # a load or voice error would fail every chunk alike: the loop stops

    def _setup(self, make):
        try:
            return make()
        except Exception:
            self.setup_failed = True
            raise

    @property
    def loaded(self) -> bool:
        return self._tts is not None

    def tts(self):
        if self._tts is None:
            loader = self._loader
            if loader is None:
                from tutortoietts.engine.pipeline import Tortoise

                loader = Tortoise.load
            options = {"low_vram": True} if self.request.low_vram else {}
            self._tts = self._setup(lambda: loader(self.plan.models_dir, self.request.device, self.plan.settings.precision, **options))
        return self._tts

    def voice_latents(self):
        """The voice's conditioning latents, from the cache when this voice met these weights before."""
        if self._voice is not None:
            return self._voice
        tts = self.tts()
        if self.plan.voice.is_random:
            self._voice = self._setup(lambda: tts.random_voice(self.request.seed))  # cheap: two small MLPs
            return self._voice
        from tutortoietts.engine.pipeline import VoiceLatents

        key = voice_key(self.plan.voice_fp, self.plan.weights_fp)
        cached = self.cache.get_voice_latents(key)
        if cached is not None:
            self._voice = VoiceLatents(cached["autoregressive"], cached["diffusion"])
        else:
            self._voice = self._setup(lambda: tts.voice_latents(load_voice_clips(self.plan.voice)))
            self.cache.put_voice_latents(key, self._voice.autoregressive, self._voice.diffusion, self.plan.weights_fp)
        return self._voice


def autoregressive_stage(tts, text: str, voice, settings, seed: int) -> ARResult:
    """Codes for every candidate, CLVP scores, and the best candidate's latents (what diffusion needs)."""
    text_ids = tts.tokenize(text)
    codes = tts.sample_codes(text_ids, voice, settings, seed)  # (n, T)
    scores = tts.rerank(text_ids, codes)  # (n,)
    chosen = int(torch.topk(scores, k=1).indices[0])  # topk, as synthesize picks (ties included)
    latents = tts.code_latents(text_ids, codes[chosen : chosen + 1], voice)  # (1, T', d)
    return ARResult(codes=codes.cpu(), scores=scores.float().cpu(), chosen=chosen, latents=latents.float().cpu())


def audio_stage(tts, result: ARResult, voice, settings, seed: int):
    """Diffusion then vocoder on (maybe cached) latents: (samples (n,), sample_rate)."""
    mel = tts.diffuse(result.latents, voice, settings, seed=seed)  # (1, 100, frames)
    wave = tts.vocode(mel, seed=seed)  # (1, 1, samples)
    return wave.reshape(-1).float().cpu(), tts.sample_rate


def render_chunk(engine: LazyEngine, cache: Cache, plan: Plan, row: ChunkRow, read_cache: bool = True):
    """(samples, sample_rate, source): audio cache, else AR cache + diffusion, else every stage.

    read_cache=False (--force) computes every stage again and overwrites the cached results.
    """
    cached = cache.get_audio(row.cache_key) if read_cache else None
    if cached is not None:
        return cached[0], cached[1], "audio-cache"
    tts = engine.tts()
    voice = engine.voice_latents()
    ar = plan.ar_keys.get(row.cache_key)
    result = cache.get_ar(ar) if ar is not None and read_cache else None
    source = "ar-cache"
    if result is None:
        source = "rendered"
        result = autoregressive_stage(tts, row.text, voice, plan.settings, row.seed)
        if ar is not None:
            cache.put_ar(ar, result, plan.weights_fp)
    samples, rate = audio_stage(tts, result, voice, plan.settings, row.seed)
    cache.put_audio(row.cache_key, samples, rate, plan.weights_fp)
    return samples, rate, source


# ---------------------------------------------------------------- the loop


def _emit(progress, event: ProgressEvent) -> None:
    if progress is not None:
        progress(event)


def _emit_notices(progress, messages: list[str], done: int, total: int) -> None:
    for message in messages:
        _emit(progress, ProgressEvent("notice", done, total, message=message))


def render_book(request: RenderRequest, progress: Callable[[ProgressEvent], None] | None = None,
                engine_loader: Callable | None = None) -> RenderSummary:
    """Render every pending chunk, then stitch and export; failures end in RenderFailed after the rest is saved."""
    started = time.perf_counter()
    plan = plan_render(request)
    if request.fmt != "wav":
        from tutortoietts.stitch import require_ffmpeg

        require_ffmpeg()  # before hours of rendering, not after
    cache = Cache(request.cache_dir)
    counts = {"rendered": 0, "ar-cache": 0, "audio-cache": 0, "failed": 0}
    with cache, Job.open(plan.job_dir) as job:
        state = job.prepare(
            book_path=plan.book_path.resolve(), book_hash=plan.book_hash, voice=f"{plan.voice.source}:{plan.voice.name}",
            preset=request.preset, settings=plan.settings.to_dict(), seed=request.seed, plan=plan.chunks,
            force=request.force,
        )
        _emit_notices(progress, [*cache.take_notices(), *job.notices, *repair_notices(state)], 0, len(plan.chunks))
        engine = LazyEngine(plan, request, cache, engine_loader)
        pending = job.rows("pending")
        total = len(plan.chunks)
        done = total - len(pending)
        already_done = done
        audio_seconds = 0.0
        loop_start = time.perf_counter()
        _emit(progress, ProgressEvent("start", done, total))
        failures: list[tuple[ChunkRow, str]] = []
        for position, row in enumerate(pending):
            chunk_start = time.perf_counter()
            try:
                samples, rate, source = render_chunk(engine, cache, plan, row, read_cache=not request.force)
                job.write_chunk(row, samples, rate, time.perf_counter() - chunk_start)
                audio_seconds += samples.numel() / rate
            except (OSError, sqlite3.OperationalError) as error:
                if engine.setup_failed:
                    raise
                # A full disk or a folder gone read-only: every chunk would fail alike, stop now.
                raise storage_error(error, plan.job_dir, done) from None
            except Exception as error:
                if engine.setup_failed:
                    raise  # bad weights or voice clips: every chunk would fail alike, stop now
                # This chunk's own problem (text the engine refuses, a numerical failure): keep going.
                message = f"{type(error).__name__}: {error}"
                job.mark_failed(row, message, time.perf_counter() - chunk_start)
                failures.append((row, message))
                source = "failed"
            _emit_notices(progress, cache.take_notices(), done, total)
            counts[source] += 1
            done += 1
            elapsed = time.perf_counter() - loop_start
            remaining = len(pending) - position - 1
            _emit(progress, ProgressEvent(
                "chunk", done, total, row.chapter_title, row.name, source, audio_seconds, elapsed,
                eta_seconds=elapsed / (position + 1) * remaining,
            ))
        if failures:
            names = ", ".join(f"{row.name} ({message})" for row, message in failures[:5])
            more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
            raise RenderFailed(
                f"{len(failures)} of {total} chunks failed: {names}{more}; the other chunks are saved in "
                f"{plan.job_dir}, run the same command again to retry the failed ones"
            )
        _emit(progress, ProgressEvent("stitch", done, total, audio_seconds=audio_seconds,
                                      wall_seconds=time.perf_counter() - loop_start))
        try:
            outputs = stitch_job(job, plan, request)
        except (OSError, sqlite3.OperationalError) as error:
            raise storage_error(error, plan.job_dir, done) from None
        job.mark_finished()
        book_audio = sum(row.duration or 0.0 for row in job.rows("done"))
    wall = time.perf_counter() - started
    _emit(progress, ProgressEvent("end", total, total, audio_seconds=audio_seconds, wall_seconds=wall))
    return RenderSummary(
        job_dir=plan.job_dir, outputs=outputs, total=total,
        rendered=counts["rendered"] + counts["ar-cache"], from_ar_cache=counts["ar-cache"],
        from_audio_cache=counts["audio-cache"], already_done=already_done, audio_seconds=book_audio,
        run_audio_seconds=audio_seconds, wall_seconds=wall, engine_loaded=engine.loaded,
    )


def repair_notices(state: dict) -> list[str]:
    notes = []
    if state.get("recovered"):
        notes.append(f"{state['recovered']} finished chunk(s) recovered from their files in the job folder")
    if state.get("damaged"):
        notes.append(f"{state['damaged']} chunk file(s) were missing or damaged and will be rendered again")
    return notes


def storage_error(error: Exception, job_dir: Path, done: int) -> UserError:
    """A write that failed for lack of space or permission, as one line that says nothing was lost."""
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in str(error)
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    cause = "the disk is full" if full else f"cannot write{where}: {getattr(error, 'strerror', None) or error}"
    fix = "free some space" if full else "fix the folder's permissions"
    return UserError(f"{cause}; the {done} finished chunks are saved in {job_dir}: {fix} and run the same command again")


def stitch_job(job: Job, plan: Plan, request: RenderRequest) -> list[Path]:
    """Chapters from the job's chunk files and pauses, one loudness gain for the book, exported.

    Returns the book file first, then the per-chapter files.
    """
    from tutortoietts.stitch import Segment, assemble_chapter, export_book, normalise_loudness

    chapters: dict[int, list] = {}
    titles: dict[int, str] = {}
    for row in job.rows():
        chapters.setdefault(row.chapter, []).append(Segment(job.directory / row.audio_path, row.pause_after))
        titles[row.chapter] = row.chapter_title
    order = sorted(chapters)
    samples = normalise_loudness([assemble_chapter(chapters[number]) for number in order])
    named = [(titles[number] or f"Chapter {position + 1}", audio) for position, (number, audio) in enumerate(zip(order, samples))]
    title = request.title or getattr(plan.book, "title", "") or plan.book_path.stem
    result = export_book(chapters=named, out_dir=job.directory, fmt=request.fmt, title=title, author=request.author)
    return result.paths()
