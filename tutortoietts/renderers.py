"""Renderers: how planned chunks become audio, behind one small protocol.

The render loop (render.py) hands a renderer an iterable of RenderTasks and takes RenderResults
back as they complete. It owns everything else: job state, the cache, progress, stitching. A
renderer owns only computation: which engine, where, how many chunks at once. A chunk's failure
(text the engine refuses, a numerical error) comes back as a result with `error` set and the
others go on; a failure that would hit every chunk alike (weights that do not load, a voice that
cannot be read) is raised out of `render`.

A result must depend only on its task (text, seed, the renderer's settings and voice), never on
which other tasks ran beside it or in what order: that is what keeps resumed and re-planned jobs
byte-identical.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

import torch

from tutortoietts.engine.pipeline import SAMPLE_RATE, ARResult, VoiceLatents


@dataclass(frozen=True)
class RenderTask:
    """One chunk to render: its text and seed, and its autoregressive result when the cache had it."""

    name: str  # the chunk's name in the job ("<chapter>-<index>"), unique within a job
    text: str
    seed: int
    ar: ARResult | None = None


@dataclass
class RenderResult:
    """A finished task: the audio and the autoregressive result it came from, or this chunk's error."""

    task: RenderTask
    samples: object = None  # float32 tensor (n,) at sample_rate; None when the chunk failed
    sample_rate: int = SAMPLE_RATE
    ar: ARResult | None = None  # what the audio was made from: computed now, or the task's own
    error: str | None = None
    seconds: float = 0.0  # compute time of this chunk

    @property
    def computed_ar(self) -> bool:
        """The autoregressive stages ran for this result (no cached result was given)."""
        return self.ar is not None and self.task.ar is None


class Renderer(Protocol):
    """Tasks in, results out as they complete (in any order); per-chunk failures as results."""

    @property
    def loaded(self) -> bool:
        """Whether an engine was loaded (a run served wholly from the cache loads none)."""

    def render(self, tasks: Iterable[RenderTask]) -> Iterator[RenderResult]:
        ...


class EngineRenderer:
    """One engine in this process, one chunk at a time: the engine's own stage sequence per task.

    The engine is loaded and the voice resolved on the first task, so a job whose chunks all come
    from the cache never loads the networks.
    """

    def __init__(self, load_engine: Callable[[], object], voice_latents: Callable[[object], VoiceLatents], settings):
        self._load_engine = load_engine
        self._voice_latents = voice_latents
        self.settings = settings
        self._tts = None
        self._voice = None

    @property
    def loaded(self) -> bool:
        return self._tts is not None

    def engine(self):
        """The loaded engine and voice (loading them on first use); errors here are everyone's."""
        if self._tts is None:
            self._tts = self._load_engine()
        if self._voice is None:
            self._voice = self._voice_latents(self._tts)
        return self._tts, self._voice

    def render(self, tasks: Iterable[RenderTask]) -> Iterator[RenderResult]:
        for task in tasks:
            tts, voice = self.engine()
            yield render_one(tts, voice, self.settings, task)


def render_one(tts, voice: VoiceLatents, settings, task: RenderTask) -> RenderResult:
    """One task through the engine's stage sequence; an exception becomes this chunk's error."""
    start = time.perf_counter()
    try:
        ar = task.ar if task.ar is not None else tts.autoregressive_stage(task.text, voice, settings, task.seed)
        clip = tts.audio_stage(ar, voice, settings.for_text(task.text), task.seed)
    except Exception as error:  # this chunk's own problem; KeyboardInterrupt and SIGTERM are not Exceptions
        return RenderResult(task, error=f"{type(error).__name__}: {error}", seconds=time.perf_counter() - start)
    return RenderResult(task, clip.samples.reshape(-1).float().cpu(), clip.sample_rate, ar,
                        seconds=time.perf_counter() - start)


class BatchedRenderer(EngineRenderer):
    """One engine in this process, many chunks at once (Tortoise.autoregressive_batch, audio_batch).

    The candidates of `batch_chunks` chunks (None: auto, from memory and the preset) decode
    together in one KV cache; a slot freed by a finished candidate takes the next chunk's, read
    from `tasks` only then. Each result is yielded as soon as its audio exists, so a kill loses
    only the unfinished chunks. A chunk's audio depends only on its task: see engine/batching.py.

    The audio stages run chunk by chunk (audio_stage) unless `batch_audio`: then chunks that
    finish together with latents of one length diffuse as one batch (audio_batch). That is off by
    default because convolution kernels choose their algorithm by batch size: a tiny fp32
    diffusion model gave a chunk 1e-6 different latents beside others than alone, and a resumed
    job would then not be byte-identical. Equal to 1e-5, not to the bit.
    """

    def __init__(self, load_engine: Callable[[], object], voice_latents: Callable[[object], VoiceLatents], settings,
                 batch_chunks: int | None = None, instruments=None, batch_audio: bool = False):
        super().__init__(load_engine, voice_latents, settings)
        self.batch_chunks = batch_chunks
        self.instruments = instruments
        self.batch_audio = batch_audio
        self.slots: int | None = None  # the cache rows the last render used

    def render(self, tasks: Iterable[RenderTask]) -> Iterator[RenderResult]:
        from tutortoietts.engine.timing import NO_INSTRUMENTS

        source = iter(tasks)
        first = next(source, None)  # nothing to compute: never load the networks
        if first is None:
            return
        tts, voice = self.engine()
        if not hasattr(tts, "autoregressive_batch"):  # an engine without batched stages (a stand-in): one by one
            for task in itertools.chain([first], source):
                yield render_one(tts, voice, self.settings, task)
            return
        instruments = self.instruments or NO_INSTRUMENTS
        slots = self.slots = tts.batch_slots(self.settings, self.batch_chunks)
        group = max(1, slots // self.settings.num_autoregressive_samples) if self.batch_audio else 1
        items = ((task, task.ar) if task.ar is not None else (task, task.text, task.seed)
                 for task in itertools.chain([first], source))
        for finished in tts.autoregressive_batch(items, voice, self.settings, slots=slots, instruments=instruments):
            ready = []
            for task, outcome in finished:
                if isinstance(outcome, Exception):
                    yield RenderResult(task, error=f"{type(outcome).__name__}: {outcome}")
                else:
                    ready.append((task, outcome))
            yield from self._audio(tts, voice, ready, group, instruments)

    def _audio(self, tts, voice: VoiceLatents, ready: list, group: int, instruments) -> Iterator[RenderResult]:
        """The audio stages for chunks whose autoregressive results are ready, in batches of one latent length."""
        buckets: dict[tuple, list] = {}
        for task, ar in ready:  # one batch runs one step count: with diffusion_steps "auto" each chunk has its own
            length = ar.latents.shape[1] if ar.latents is not None else None  # None: a hifi run's result
            buckets.setdefault((length, self.settings.for_text(task.text)), []).append((task, ar))
        for (_, settings), bucket in buckets.items():
            for first in range(0, len(bucket), group):
                batch = bucket[first : first + group]
                try:
                    if self.batch_audio:
                        clips = tts.audio_batch([ar for _, ar in batch], voice, settings, [t.seed for t, _ in batch],
                                                instruments)
                    else:
                        clips = [tts.audio_stage(batch[0][1], voice, settings, batch[0][0].seed, instruments)]
                except Exception as error:
                    if len(batch) > 1:  # find whose it is: each alone computes the same as in the batch
                        for item in batch:
                            yield from self._audio(tts, voice, [item], 1, instruments)
                        continue
                    task, ar = batch[0]
                    yield RenderResult(task, ar=ar, error=f"{type(error).__name__}: {error}",
                                       seconds=sum(ar.timings.values()))
                    continue
                for (task, ar), clip in zip(batch, clips):
                    seconds = sum(clip.timings.values())
                    if not torch.isfinite(clip.samples).all():
                        yield RenderResult(task, ar=ar, error="FloatingPointError: the audio is not finite (NaN or inf)",
                                           seconds=seconds)
                    else:
                        yield RenderResult(task, clip.samples.reshape(-1).float().cpu(), clip.sample_rate, ar,
                                           seconds=seconds)
