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

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

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
