"""One stage sequence: `generate`, `profile` and `bench` compute exactly the same audio for the same inputs."""

from __future__ import annotations

import numpy as np
import soundfile
import torch

from tutortoietts.devtools.bench import our_synthesis
from tutortoietts.devtools.profiling import ProfileOptions, profile_once
from tutortoietts.engine.pipeline import Tortoise
from tutortoietts.engine.timing import StageTimer
from tutortoietts.jobs import Job
from tutortoietts.render import RenderRequest, render_book
from tutortoietts.settings import load_preset

OVERRIDES = dict(num_autoregressive_samples=3, max_mel_tokens=20)
JOB_SEED = 4


def test_generate_profile_and_bench_give_the_same_audio(tiny_models_dir, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("The keeper lit the lamp at dusk.\n")
    request = RenderRequest(book=book, voice="random", preset="ultra_fast_v2", overrides=OVERRIDES, precision="fp32",
                            fmt="wav", out_dir=tmp_path / "job", models_dir=tiny_models_dir, device="cpu", seed=JOB_SEED,
                            cache_dir=tmp_path / "cache", batch_chunks=1)  # the serial sequence profile and bench run
    render_book(request)
    with Job.open(request.out_dir) as job:
        rows = job.rows()
    print("[stages] chunks:", [r.text for r in rows])
    (row,) = [r for r in rows if "keeper" in r.text]
    generated, rate = soundfile.read(request.out_dir / row.audio_path, dtype="float32")
    assert rate == 24000 and generated.size > 0

    # profile: the chunk's text and seed, the job's random voice, the same preset and values.
    options = ProfileOptions(preset="ultra_fast_v2", text=row.text, models_dir=tiny_models_dir, device="cpu",
                             trace_path=tmp_path / "trace.json", seed=row.seed, voice_seed=JOB_SEED, precision="fp32",
                             codes=OVERRIDES["max_mel_tokens"], samples=OVERRIDES["num_autoregressive_samples"])
    report, clip = profile_once(options)
    profiled = clip.samples.numpy()

    # bench: our side's synthesis function on the same inputs.
    tts = Tortoise.load(tiny_models_dir, "cpu", "fp32")
    settings = load_preset("ultra_fast_v2", precision="fp32", **OVERRIDES)
    timer = StageTimer("cpu")
    benched = our_synthesis(tts, row.text, tts.random_voice(JOB_SEED), settings, row.seed, timer)
    benched_wave = benched["wav"].reshape(-1).numpy()

    print(f"[stages] generate {generated.size} samples; profile max|diff| {np.abs(profiled - generated).max():.3e}; "
          f"bench max|diff| {np.abs(benched_wave - generated).max():.3e}; decode steps {benched['ar_steps']}")
    assert np.array_equal(profiled, generated)
    assert np.array_equal(benched_wave, generated)
    # Random tiny weights never stop: every candidate decodes exactly max_mel_tokens positions.
    assert benched["ar_steps"] == OVERRIDES["max_mel_tokens"]
    assert set(report["stage_seconds"]) == set(timer.seconds) == {"autoregressive", "rerank", "latents", "diffusion", "vocoder"}


def test_instruments_see_every_stage_and_step(tiny_models_dir):
    """Instrumentation is passed in: stages in order, one decode_step per code position, sampling ranges."""
    from tutortoietts.engine.timing import Instruments

    class Recorder(Instruments):
        def __init__(self):
            self.events = []

        def stage(self, name):
            self.events.append(("stage", name))
            return super().stage(name)

        def range(self, name):
            self.events.append(("range", name))
            return super().range(name)

        def decode_step(self, step):
            self.events.append(("step", step))

    tts = Tortoise.load(tiny_models_dir, "cpu", "fp32")
    settings = load_preset("ultra_fast_v2", precision="fp32", num_autoregressive_samples=2, max_mel_tokens=7,
                           diffusion_iterations=3)
    recorder = Recorder()
    plain = tts.synthesize("Counting the steps.", tts.random_voice(0), settings, seed=2)
    seen = tts.synthesize("Counting the steps.", tts.random_voice(0), settings, seed=2, instruments=recorder)
    assert torch.equal(plain.samples, seen.samples)  # observing changes nothing
    stages = [name for kind, name in recorder.events if kind == "stage"]
    assert stages == ["autoregressive", "rerank", "latents", "diffusion", "vocoder"]
    assert [value for kind, value in recorder.events if kind == "step"] == list(range(7))
    assert [value for kind, value in recorder.events if kind == "range"] == ["ar:sampling"] * 7
