"""The render loop: plan the chunks, take each from job state, the cache or a renderer, then stitch the book.

`render_book` is the outline: plan_render -> prepare_job -> gate.render_gated (every pending chunk through
a Renderer, see renderers.py, and the quality gate) -> raise_failures -> stitch_job.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tutortoietts.cache import Cache, ar_key, audio_key, voice_key
from tutortoietts.errors import UserError
from tutortoietts.jobs import ChunkRow, Job, PlannedChunk, chunk_seed, default_job_dir, storage_error
from tutortoietts.renderers import BatchedRenderer, EngineRenderer, Renderer
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
    chapters: str | None = None  # --chapters "1,3-4": a preview of those chapters (1-based) into the same job
    batch_chunks: int | str = "auto"  # chunks decoded at once: "auto" (from memory and the preset), N, or 1 = one at a time
    ray_address: str | None = None  # render on Ray actors: "local" starts Ray here, else "auto" or an address to join
    workers: int | None = None  # at most this many Ray actors (default: one per GPU, or one per machine on CPUs)
    cover: Path | None = None  # an image to embed instead of the book's own cover
    narrator: str | None = None  # the narrator tag (default: the synthetic voice's name)
    include_front_matter: bool = False  # EPUB: read the cover page, title page, copyright, contents, index too
    subtitles: str | None = None  # "srt" | "vtt": one file per chapter and one for the book
    master: str = "default"  # mastering profile (masters.toml)
    lexicon: Path | None = None  # pronunciation respellings (lexicon.py), on top of the user's own
    text_overrides: tuple = ()  # ("chapter-index", text) pairs: redo --text (lexicon.respell_chunks)
    retries: int = 2  # quality gate (gate.py): more takes for a chunk that fails a check
    asr: bool = False  # quality gate: a pocketsphinx round trip on every take
    asr_model: Path | None = None  # quality gate: a local faster-whisper model instead of pocketsphinx


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
    workers: tuple = ()  # with several workers (Ray actors): each one's cluster.WorkerStat, on "chunk" events

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
    tags: object = None  # tags.BookTags: title, authors, narrator, cover... for every output file


def resolve_weights(models_dir: Path | None) -> tuple[Path, str]:
    """The checkpoint folder and its fingerprint (missing weights are a UserError from checkpoints)."""
    from tutortoietts.engine.checkpoints import find_models_dir, weights_fingerprint

    directory = find_models_dir(models_dir)
    return directory, weights_fingerprint(directory)


def hifi_weights(models_dir: Path) -> str:
    """For the hifi decoder: hifidecoder.pth checked (one line now, before a job is touched, when it
    is missing or damaged) -> its fingerprint, which the audio keys hold."""
    from tutortoietts.engine.checkpoints import optional_fingerprint, require_optional

    require_optional(models_dir, "hifidecoder")
    return optional_fingerprint(models_dir, "hifidecoder")


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
    book = read_book(request.book, request.encoding, include_front_matter=request.include_front_matter)
    overrides = dict(request.overrides)
    if request.precision is not None:
        overrides["precision"] = request.precision
    # With Ray the engines run on other machines: "auto" is resolved as on a CPU, bf16, which is also
    # what every GPU since Ampere resolves it to (cluster.EngineSpec carries the result to the actors).
    settings = concrete_precision(load_preset(request.preset, **overrides),
                                  "cpu" if request.ray_address is not None else request.device)
    voice = find_voice(request.voice)
    voice_fp = voice_fingerprint(voice, request.seed)
    models_dir, weights_fp = resolve_weights(request.models_dir)
    decoder_fp = hifi_weights(models_dir) if settings.decoder == "hifi" else None
    # Chunks are sized for the generation length this run asks for.
    chunks = chunk_book(book, ChunkLimits(max_mel_tokens=settings.max_mel_tokens))
    if not chunks:
        raise UserError(f"manuscript has no text to read: {request.book}")
    from tutortoietts.lexicon import load_lexicon, respell_chunks

    # Respellings after the boundaries are drawn: only chunks holding a changed word get new keys.
    chunks = respell_chunks(chunks, load_lexicon(request.lexicon), dict(request.text_overrides))
    planned, ar_keys = [], {}
    for chunk in chunks:
        seed = chunk_seed(request.seed, chunk.text)
        ar = ar_key(chunk.text, voice_fp, settings, seed, weights_fp, decoder=decoder_name(request))
        key = audio_key(ar, settings.for_text(chunk.text), decoder_fp)  # the chunk's own diffusion steps when "auto"
        ar_keys[key] = ar
        title = book.chapters[chunk.chapter].title
        planned.append(PlannedChunk(chunk.chapter, chunk.index, title, chunk.text, chunk.pause_after, seed, key))
    job_dir = Path(request.out_dir) if request.out_dir is not None else default_job_dir(request.book)
    from tutortoietts.tags import book_tags

    tags = book_tags(book, title=request.title, author=request.author, narrator=request.narrator, cover=request.cover,
                     voice=voice.name)
    return Plan(Path(request.book), file_sha256(request.book), book, settings, voice, voice_fp, models_dir, weights_fp,
                job_dir, planned, ar_keys, tags)


# ---------------------------------------------------------------- the engine and the voice


def engine_loader(plan: Plan, request: RenderRequest, loader: Callable | None = None) -> Callable[[], object]:
    """A function that loads the engine for this plan (called by a renderer, only when needed)."""

    def load():
        from tutortoietts.engine.pipeline import Tortoise

        options = {"low_vram": True} if request.low_vram else {}
        return (loader or Tortoise.load)(plan.models_dir, request.device, plan.settings.precision, **options)

    return load


def voice_resolver(plan: Plan, request: RenderRequest, cache: Cache) -> Callable[[object], object]:
    """tts -> the voice's conditioning latents, from the cache when this voice met these weights before."""

    def resolve(tts):
        if plan.voice.is_random:
            return tts.random_voice(request.seed)  # cheap: two small MLPs
        from tutortoietts.engine.pipeline import VoiceLatents

        key = voice_key(plan.voice_fp, plan.weights_fp)
        cached = cache.get_voice_latents(key)
        if cached is not None:
            return VoiceLatents(cached["autoregressive"], cached["diffusion"])
        voice = tts.voice_latents(load_voice_clips(plan.voice))
        cache.put_voice_latents(key, voice.autoregressive, voice.diffusion, plan.weights_fp)
        return voice

    return resolve


def batch_chunks(request: RenderRequest) -> int | None:
    """--batch-chunks as a count, None for auto; a UserError for anything else."""
    value = request.batch_chunks
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--batch-chunks must be a whole number or auto, got {value!r}") from None
    if count < 1:
        raise UserError(f"--batch-chunks must be at least 1 (or auto), got {count}")
    return count


def decoder_name(request: RenderRequest) -> str | None:
    """The autoregressive decoder this request's renderer runs, for the AR cache key: None for the
    serial one (EngineRenderer, the reference's random stream), "batched" for BatchedRenderer, whose
    candidates draw from per-candidate streams and so sample other codes. Any batch size > 1 gives
    the same codes (engine/batching.py), so only the decoder, not the count, is in the key."""
    if batch_chunks(request) == 1 or request.low_vram:
        return None
    return "batched"


def make_renderer(plan: Plan, request: RenderRequest, cache: Cache, loader: Callable | None = None) -> Renderer:
    """The renderer for this request: one engine in this process, or one per Ray actor (--ray)."""
    if request.ray_address is not None:
        from tutortoietts.cluster import EngineSpec, RayRenderer

        # The actors run the renderer this process would (the decoder is part of the cache keys).
        batched = decoder_name(request) == "batched"
        spec = EngineSpec(str(plan.models_dir), plan.settings.precision, request.low_vram, plan.weights_fp, plan.settings,
                          batched, batch_chunks(request) if batched else None)
        return RayRenderer(spec, request.ray_address, request.device, voice_resolver(plan, request, cache),
                           workers=request.workers)
    if decoder_name(request) == "batched":
        return BatchedRenderer(engine_loader(plan, request, loader), voice_resolver(plan, request, cache), plan.settings,
                               batch_chunks=batch_chunks(request))
    return EngineRenderer(engine_loader(plan, request, loader), voice_resolver(plan, request, cache), plan.settings)


# ---------------------------------------------------------------- the loop


class ProgressTracker:
    """Turns finished chunks into ProgressEvents with an ETA from this run's pace."""

    def __init__(self, progress, done: int, total: int, pending: int):
        self.progress, self.done, self.total, self.pending = progress, done, total, pending
        self.finished = 0  # this run's chunks, for the pace
        self.start = time.perf_counter()
        self.workers: Callable[[], tuple] | None = None  # a renderer's per-worker stats, for each chunk event

    def watch(self, renderer) -> None:
        """A renderer with several workers reports them with every chunk, and its notices (a worker lost) as they come."""
        self.workers = getattr(renderer, "worker_stats", None)
        if hasattr(renderer, "notify"):
            renderer.notify = self.notices

    def emit(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def notices(self, messages: list[str]) -> None:
        for message in messages:
            self.emit(ProgressEvent("notice", self.done, self.total, message=message))

    def chunk(self, row: ChunkRow, source: str, audio_seconds: float) -> None:
        self.done += 1
        self.finished += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.finished * (self.pending - self.finished)
        self.emit(ProgressEvent("chunk", self.done, self.total, row.chapter_title, row.name, source, audio_seconds,
                                elapsed, eta_seconds=eta, workers=self.workers() if self.workers else ()))


def raise_failures(counts, total: int, job_dir: Path) -> None:
    """The failure policy (counts: gate.RunCounts): a failed chunk does not stop the others, but the book is not stitched without it."""
    if not counts.failed:
        return
    names = ", ".join(f"{row.name} ({message})" for row, message in counts.failed[:5])
    more = f" and {len(counts.failed) - 5} more" if len(counts.failed) > 5 else ""
    raise RenderFailed(
        f"{len(counts.failed)} of {total} chunks failed: {names}{more}; the other chunks are saved in "
        f"{job_dir}, run the same command again to retry the failed ones"
    )


def prepare_job(job: Job, plan: Plan, request: RenderRequest) -> dict:
    """Bring the job folder in line with the plan; returns the repair state (see repair_notices)."""
    return job.prepare(
        book_path=plan.book_path.resolve(), book_hash=plan.book_hash, voice=f"{plan.voice.source}:{plan.voice.name}",
        preset=request.preset, settings=plan.settings.to_dict(), seed=request.seed, plan=plan.chunks,
        force=request.force,
    )


def check_export_possible(request: RenderRequest) -> None:
    """Everything the export will need, checked before hours of rendering, not after."""
    from tutortoietts.mastering import load_profile
    from tutortoietts.subtitles import check_kind

    profile = load_profile(request.master)
    if profile.format and request.fmt != profile.format:
        raise UserError(f"--master {profile.name} writes {profile.format} files: leave out --format or use --format {profile.format}")
    check_kind(request.subtitles)
    if request.fmt != "wav":
        from tutortoietts.stitch import require_ffmpeg

        require_ffmpeg()  # before hours of rendering, not after


def preview_chapters(spec: str | None, plan: Plan) -> set[int] | None:
    """--chapters "1,3-4" -> the chapters' indexes in the book (0-based); None for the whole book.
    Numbers are 1-based, as `tutortoietts chapters` lists them."""
    if spec is None:
        return None
    count = len(plan.book.chapters)
    chosen: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise UserError(f"--chapters wants numbers and ranges like 1,3-4, got {spec!r}") from None
        if not 1 <= low <= high <= count:
            raise UserError(f"--chapters {part}: the book has chapters 1 to {count} (see `tutortoietts chapters`)")
        chosen.update(range(low - 1, high))
    with_text = {chunk.chapter for chunk in plan.chunks}
    if not chosen & with_text:
        raise UserError(f"--chapters {spec}: nothing to read in those chapters")
    return chosen


def render_book(request: RenderRequest, progress: Callable[[ProgressEvent], None] | None = None,
                engine_loader: Callable | None = None, renderer: Renderer | None = None) -> RenderSummary:
    """Plan, render every pending chunk, then stitch and export; failures end in RenderFailed after the rest is saved."""
    started = time.perf_counter()
    plan = plan_render(request)
    preview = preview_chapters(request.chapters, plan)  # --chapters: render only these now, the rest stay pending
    check_export_possible(request)
    with Cache(request.cache_dir) as cache, Job.open(plan.job_dir) as job:
        state = prepare_job(job, plan, request)
        pending = job.rows("pending")
        total = len(plan.chunks)
        if preview is not None:
            pending = [row for row in pending if row.chapter in preview]
            total = sum(1 for chunk in plan.chunks if chunk.chapter in preview)
        tracker = ProgressTracker(progress, total - len(pending), total, len(pending))
        tracker.notices([*cache.take_notices(), *job.notices, *repair_notices(state)])
        already_done = tracker.done
        renderer = renderer or make_renderer(plan, request, cache, engine_loader)
        tracker.watch(renderer)
        tracker.emit(ProgressEvent("start", tracker.done, total))
        from tutortoietts.gate import GateOptions, render_gated

        job.set_request(request_record(request))  # what `redo` renders and stitches with
        counts = render_gated(job, plan, request, cache, renderer, pending, tracker,
                              GateOptions(request.retries, request.asr, request.asr_model))
        raise_failures(counts, total, plan.job_dir)
        tracker.emit(ProgressEvent("stitch", tracker.done, total, audio_seconds=counts.audio_seconds,
                                   wall_seconds=time.perf_counter() - tracker.start))
        try:
            # (a preview's own call, so that a stand-in stitch_job for the whole book keeps its signature)
            outputs = stitch_job(job, plan, request) if preview is None else stitch_job(job, plan, request, preview)
        except (OSError, sqlite3.OperationalError) as error:
            raise storage_error(error, plan.job_dir, tracker.done) from None
        if preview is None:  # a preview leaves the book unfinished
            job.mark_finished()
        book_audio = sum(row.duration or 0.0 for row in job.rows("done"))
    wall = time.perf_counter() - started
    tracker.emit(ProgressEvent("end", total, total, audio_seconds=counts.audio_seconds, wall_seconds=wall))
    return RenderSummary(
        job_dir=plan.job_dir, outputs=outputs, total=total,
        rendered=counts.rendered + counts.ar_cache, from_ar_cache=counts.ar_cache,
        from_audio_cache=counts.audio_cache, already_done=already_done, audio_seconds=book_audio,
        run_audio_seconds=counts.audio_seconds, wall_seconds=wall, engine_loaded=renderer.loaded,
    )


def repair_notices(state: dict) -> list[str]:
    notes = []
    if state.get("recovered"):
        notes.append(f"{state['recovered']} finished chunk(s) recovered from their files in the job folder")
    if state.get("damaged"):
        notes.append(f"{state['damaged']} chunk file(s) were missing or damaged and will be rendered again")
    return notes


def stitch_job(job: Job, plan: Plan, request: RenderRequest, preview: set[int] | None = None) -> list[Path]:
    """Chapters from the job's chunk files and pauses, mastered by the request's profile, tagged, exported.

    Returns the book file first (the chapters folder when the profile writes no book file), then the
    per-chapter files, then any subtitles. With `preview` (--chapters), only those chapters, into the
    job's preview/ folder: the book's own files are written when the whole book is done.
    """
    from tutortoietts.mastering import load_profile
    from tutortoietts.stitch import Segment, finish_book
    from tutortoietts.tags import book_tags

    chapters: dict[int, list] = {}
    titles: dict[int, str] = {}
    for row in job.rows():
        if preview is not None and row.chapter not in preview:
            continue
        chapters.setdefault(row.chapter, []).append(Segment(job.directory / row.audio_path, row.pause_after, row.text))
        titles[row.chapter] = row.chapter_title
    order = sorted(chapters)
    named = [(titles[number] or f"Chapter {position + 1}", chapters[number]) for position, number in enumerate(order)]
    tags = plan.tags or book_tags(plan.book, title=request.title, author=request.author, narrator=request.narrator,
                                  cover=request.cover, voice=plan.voice.name)
    out_dir = job.directory if preview is None else job.directory / "preview"
    out_dir.mkdir(exist_ok=True)
    result = finish_book(named, out_dir, request.fmt, tags, load_profile(request.master), request.subtitles)
    return result.paths()


def request_record(request) -> dict:
    """A RenderRequest as JSON the job keeps (paths absolute, marked), for `redo`."""
    import dataclasses

    record = {}
    for item in dataclasses.fields(request):
        value = getattr(request, item.name)
        if item.name == "voice" and value != "random" and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())  # a folder of clips: found from any folder
        if isinstance(value, Path):
            value = {"path": str(value.expanduser().resolve())}
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        record[item.name] = value
    record["force"] = False  # a redo never re-renders the whole book
    return record


def request_from_record(record: dict, **changes):
    """The RenderRequest a job was rendered with (fields this version does not know are dropped)."""
    import dataclasses

    known = {item.name for item in dataclasses.fields(RenderRequest)}
    values = {}
    for name, value in record.items():
        if name not in known:
            continue
        if isinstance(value, dict) and set(value) == {"path"}:
            value = Path(value["path"])
        elif name == "text_overrides":
            value = tuple(tuple(pair) for pair in value)
        values[name] = value
    values.update(changes)
    return RenderRequest(**values)
