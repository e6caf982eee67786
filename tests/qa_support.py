"""What the quality-gate tests share: a renderer that speaks with espeak-ng (defects on demand), a small book, runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

from tests import qa_corpus
from tutortoietts.engine.pipeline import ARResult
from tutortoietts.gate import take_seed
from tutortoietts.jobs import chunk_seed
from tutortoietts.renderers import RenderResult

BOOK = """# Quality Test

## Chapter One

The quick brown fox jumps over the lazy dog, and then it runs away.

She sells sea shells by the sea shore every morning before breakfast.

Nobody expected the old clock in the hall to start ticking again.

## Chapter Two

A small boat drifted slowly across the quiet lake as the sun went down.

My grandmother kept her letters in a wooden box under the bed.
"""


def attempt_of(text: str, seed: int, job_seed: int = 0) -> int:
    """Which take a task is, from its seed (take_seed of the chunk's own seed)."""
    own = chunk_seed(job_seed, text)
    for attempt in range(1, 50):
        if take_seed(own, attempt) == seed:
            return attempt
    raise AssertionError(f"seed {seed} is no take of {text!r}")


def defective(kind: str, clean: np.ndarray, text: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "loop":
        return qa_corpus.loop_three_times(clean)
    if kind == "noise":
        return qa_corpus.white_noise(clean, rng)
    if kind == "silence":
        return qa_corpus.insert_silence(clean, rng)
    if kind == "cut":
        return qa_corpus.cut_mid_word(clean, rng)
    if kind == "clipped":
        return qa_corpus.overdrive(clean, rng)
    if kind == "different":  # other words, as long: what only the speech-recognition check hears
        return qa_corpus.espeak(OTHER_WORDS, speed=150 + seed % 30)
    raise ValueError(kind)


OTHER_WORDS = "Thunder rolled across the valley, and the first heavy drops began to fall."


class EspeakRenderer:
    """A Renderer whose "model" is espeak-ng: each take a little different (its speed follows the seed),
    and chosen takes defective. defects: (chunk name, attempt) -> kind, or (None, attempt) for every chunk.
    no_stop: (chunk name, attempt) pairs whose autoregressive result ran to the limit."""

    def __init__(self, defects: dict | None = None, no_stop: set | None = None, interrupt_at: int | None = None):
        self.defects = defects or {}
        self.no_stop = no_stop or set()
        self.interrupt_at = interrupt_at  # raise KeyboardInterrupt on this call (1-based), as Ctrl-C would
        self.calls: list[tuple[str, int, str]] = []  # (chunk name, attempt, text)
        self.loaded = True

    def render(self, tasks):
        for task in tasks:
            attempt = attempt_of(task.text, task.seed)
            self.calls.append((task.name, attempt, task.text))
            if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
                raise KeyboardInterrupt
            samples = qa_corpus.espeak(task.text, speed=150 + task.seed % 30)
            kind = self.defects.get((task.name, attempt), self.defects.get((None, attempt)))
            if kind is not None:
                samples = defective(kind, samples, task.text, task.seed)
            stopped = (task.name, attempt) not in self.no_stop
            ar = ARResult(codes=torch.zeros(2, 4, dtype=torch.long), scores=torch.tensor([2.0, 1.0]), chosen=0,
                          latents=torch.zeros(1, 4, 8), stopped=torch.tensor([stopped, True]))
            yield RenderResult(task, torch.from_numpy(np.ascontiguousarray(samples)), qa_corpus.RATE, ar, seconds=0.01)


def make_workspace(root: Path) -> dict:
    """The book and an espeak voice folder under root."""
    book = root / "book.md"
    book.write_text(BOOK, encoding="utf-8")
    voice = root / "espeak-voice"
    voice.mkdir(exist_ok=True)
    for index, clip in enumerate(qa_corpus.voice_clips()):
        soundfile.write(voice / f"{index}.wav", clip, qa_corpus.RATE)
    return {"book": book, "voice": voice}


def request(space: dict, models_dir: Path, job_dir: Path, **changes):
    from tutortoietts.render import RenderRequest

    values = dict(book=space["book"], voice=str(space["voice"]), preset="ultra_fast_v2", out_dir=job_dir, fmt="wav",
                  models_dir=models_dir, device="cpu", precision="fp32", cache_dir=job_dir.parent / f"{job_dir.name}-cache")
    values.update(changes)
    return RenderRequest(**values)


def generate(space: dict, models_dir: Path, job_dir: Path, renderer, **changes):
    """render_book with the renderer; returns (summary, notices)."""
    from tutortoietts.render import render_book

    notices: list[str] = []

    def progress(event):
        if event.kind == "notice":
            notices.append(event.message)

    summary = render_book(request(space, models_dir, job_dir, **changes), progress=progress, renderer=renderer)
    return summary, notices


def chunk_bytes(job_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((job_dir / "chunks").glob("*.wav"))}
