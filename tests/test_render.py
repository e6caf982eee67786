"""The render loop on a fake engine: cache tiers, failures that spare the rest, progress, no needless loads."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tutortoietts import render
from tutortoietts.engine.pipeline import Tortoise
from tutortoietts.jobs import Job
from tutortoietts.render import RenderFailed, RenderRequest, render_book

BOOK = """# Test Book

## Chapter One

The first paragraph is here. It has two sentences.

A second paragraph follows.

## Chapter Two

The last words of the book.
"""


class FakeEngine:
    """The Tortoise stage API with arithmetic instead of networks; counts every stage call. The stage
    sequence itself (autoregressive, audio) is the engine's own."""

    sample_rate = 24000
    device = torch.device("cpu")
    autoregressive_stage = Tortoise.autoregressive_stage
    choose_candidate = Tortoise.choose_candidate  # the stages after sampling, which autoregressive_stage calls
    audio_stage = Tortoise.audio_stage

    def __init__(self, fail_on: str | None = None):
        self.calls = {"sample_codes": 0, "diffuse": 0}
        self.fail_on = fail_on

    def tokenize(self, text):
        return torch.tensor([[ord(c) % 255 for c in text]])

    def random_voice(self, seed):
        return ("random", seed)

    def sample_raw_codes(self, text_ids, voice, settings, seed, instruments=None):
        self.calls["sample_codes"] += 1
        if self.fail_on is not None and bool((text_ids == ord(self.fail_on[0]) % 255).all()) is False:
            text = "".join(chr(int(i)) for i in text_ids[0])
            if self.fail_on in text:
                raise RuntimeError("synthetic failure")
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 8192, (settings.num_autoregressive_samples, text_ids.shape[1] + 4), generator=generator)

    def rerank(self, text_ids, codes):
        return codes.float().mean(dim=1)

    def code_latents(self, text_ids, codes, voice):
        return codes.float().unsqueeze(-1) / 8192  # (1, T, 1)

    def diffuse(self, latents, voice, settings, noise=None, seed=0, progress=None):
        self.calls["diffuse"] += 1
        generator = torch.Generator().manual_seed(seed + settings.diffusion_iterations)
        return latents.transpose(1, 2) + 0.01 * torch.randn(latents.shape[0], 1, latents.shape[1], generator=generator)

    def vocode(self, mel, noise=None, seed=0):
        return mel.repeat_interleave(256, dim=-1).unsqueeze(1)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "resolve_weights", lambda d: (tmp_path, "fake-weights"))
    stitched = []

    def fake_stitch(job, plan, request, preview=None):
        stitched.append([row.audio_path for row in job.rows()])
        return [job.directory / f"book.{request.fmt}"]

    monkeypatch.setattr(render, "stitch_job", fake_stitch)
    book = tmp_path / "book.md"
    book.write_text(BOOK)
    request = RenderRequest(book=book, voice="random", preset="ultra_fast", fmt="wav", out_dir=tmp_path / "job",
                            cache_dir=tmp_path / "cache", overrides={"num_autoregressive_samples": 2, "diffusion_iterations": 3})
    return request, stitched


def chunk_bytes(job_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((job_dir / "chunks").glob("*.wav"))}


def test_cache_tiers_and_reuse(setup, tmp_path):
    request, stitched = setup
    engines = []

    def loader(models_dir, device, precision):
        engines.append(FakeEngine())
        return engines[-1]

    events = []
    first = render_book(request, progress=events.append, engine_loader=loader)
    n = first.total
    print("chunks", n, "first", first)
    assert n >= 4 and first.rendered == n and first.from_audio_cache == 0
    assert engines[0].calls == {"sample_codes": n, "diffuse": n}
    chunk_events = [e for e in events if e.kind == "chunk"]
    assert [e.done for e in chunk_events] == list(range(1, n + 1)) and chunk_events[-1].eta_seconds == 0
    assert chunk_events[-1].audio_seconds > 0 and chunk_events[-1].real_time_factor is not None
    reference = chunk_bytes(request.out_dir)
    assert len(reference) == n and len(stitched) == 1

    # Same job again: nothing to do, the engine is never loaded.
    again = render_book(request, engine_loader=loader)
    assert again.already_done == n and again.rendered == 0 and not again.engine_loaded and len(engines) == 1

    # A fresh job folder, same settings: every chunk from the audio cache, still no engine.
    fresh = render_book(RenderRequest(**{**request.__dict__, "out_dir": tmp_path / "job2"}), engine_loader=loader)
    assert fresh.from_audio_cache == n and not fresh.engine_loaded
    assert chunk_bytes(tmp_path / "job2") == reference

    # Only a diffusion setting changes: AR results reused, diffusion runs again.
    overrides = {**request.overrides, "diffusion_iterations": 5}
    diffusion = render_book(RenderRequest(**{**request.__dict__, "overrides": overrides}), engine_loader=loader)
    assert diffusion.from_ar_cache == n and engines[-1].calls == {"sample_codes": 0, "diffuse": n}

    # --force: every stage computed again, cache or not.
    forced = render_book(RenderRequest(**{**request.__dict__, "force": True}), engine_loader=loader)
    assert forced.rendered == n and forced.from_audio_cache == 0 and engines[-1].calls == {"sample_codes": n, "diffuse": n}
    assert chunk_bytes(request.out_dir) == reference  # and, being deterministic, the same audio

    # A different seed: nothing reused.
    reseeded = render_book(RenderRequest(**{**request.__dict__, "seed": 5}), engine_loader=loader)
    assert reseeded.rendered == n and reseeded.from_ar_cache == 0 and engines[-1].calls["sample_codes"] == n


def test_failed_chunk_spares_the_rest(setup):
    request, stitched = setup
    with pytest.raises(RenderFailed) as error:
        render_book(request, engine_loader=lambda *a: FakeEngine(fail_on="second paragraph"))
    message = str(error.value)
    print(message)
    assert "1 of" in message and "synthetic failure" in message and "0-2" in message
    with Job.open(request.out_dir) as job:
        counts = job.counts()
        failed = job.rows("failed")
    assert counts["failed"] == 1 and counts["pending"] == 0 and failed[0].attempts == 1 and not stitched
    # The next run renders only the failed chunk.
    healthy = []
    summary = render_book(request, engine_loader=lambda *a: healthy.append(FakeEngine()) or healthy[-1])
    assert summary.rendered == 1 and summary.already_done == summary.total - 1 and len(stitched) == 1


def test_interrupt_keeps_done_chunks(setup):
    request, _ = setup

    class Interrupting(FakeEngine):
        def diffuse(self, *args, **kwargs):
            if self.calls["diffuse"] == 2:
                raise KeyboardInterrupt
            return super().diffuse(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        render_book(request, engine_loader=lambda *a: Interrupting())
    with Job.open(request.out_dir) as job:  # the lock went with the interrupted run
        assert job.counts()["done"] == 2
    summary = render_book(request, engine_loader=lambda *a: FakeEngine())
    assert summary.already_done == 2 and summary.rendered == summary.total - 2


def test_cached_stage_path_equals_synthesize(tiny_models_dir, tmp_path):
    """The render loop's split (AR result cached, then diffusion + vocoder) gives synthesize's samples exactly."""
    from tutortoietts.cache import Cache
    from tutortoietts.engine.pipeline import Tortoise
    from tutortoietts.settings import load_preset

    tts = Tortoise.load(tiny_models_dir, "cpu", "fp32")
    settings = load_preset("ultra_fast_v2", num_autoregressive_samples=2, diffusion_iterations=3, max_mel_tokens=24,
                           precision="fp32")
    voice = tts.random_voice(1)
    text = "A short line to speak."
    clip = tts.synthesize(text, voice, settings, seed=11)
    result = tts.autoregressive_stage(text, voice, settings, 11)
    # Through the disk cache, as a later run would see it.
    with Cache(tmp_path / "cache") as cache:
        cache.put_ar("k", result, "w")
        stored = cache.get_ar("k")
    audio = tts.audio_stage(stored, voice, settings, 11)
    samples, rate = audio.samples, audio.sample_rate
    diff = (samples - clip.samples).abs().max().item()
    print(f"stage path vs synthesize: {samples.shape[0]} samples, max|diff| = {diff:.3e}")
    assert rate == clip.sample_rate and samples.shape == clip.samples.shape and diff == 0.0
