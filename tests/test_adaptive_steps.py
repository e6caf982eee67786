"""Adaptive diffusion steps: a chunk's count from its text's complexity, in the audio key, run by the audio stage."""

from __future__ import annotations

import pytest

from tests.cli_support import cli
from tutortoietts.cache import ar_key, audio_key, digest
from tutortoietts.errors import UserError
from tutortoietts.settings import DIFFUSION_FIELDS, adaptive_diffusion_steps, load_preset, text_complexity

SIMPLE = "The cat sat on the mat and the dog lay by the door all day long."
MIDDLE = "Another quiet evening passed beside the old harbour walls."
DENSE = "In 1984, the pharmaceutical pseudoephedrine: 12 mg; 45 doses; 3 refills."


def auto(low: int = 20, high: int = 60):
    return load_preset("balanced_v2", diffusion_steps="auto", diffusion_steps_range=[low, high])


def test_complexity_is_the_chunkers_three_classes():
    from tutortoietts.chunking import ChunkLimits, target_chars

    limits = ChunkLimits()
    assert [target_chars(t, limits) for t in (SIMPLE, MIDDLE, DENSE)] == [limits.simple_chars, limits.default_chars,
                                                                        limits.dense_chars]
    assert [text_complexity(t) for t in (SIMPLE, MIDDLE, DENSE)] == [0.0, 0.5, 1.0]


def test_steps_span_the_range_by_complexity_and_never_leave_it():
    assert [adaptive_diffusion_steps(t, 20, 60) for t in (SIMPLE, MIDDLE, DENSE)] == [20, 40, 60]
    assert [adaptive_diffusion_steps(t, 30, 45) for t in (SIMPLE, MIDDLE, DENSE)] == [30, 38, 45]  # 37.5 rounds up
    assert adaptive_diffusion_steps(DENSE, 7, 7) == 7


def test_for_text_resolves_auto_and_leaves_fixed_alone():
    fixed = load_preset("balanced_v2")
    assert fixed.for_text(DENSE) is fixed
    settings = auto()
    resolved = [settings.for_text(t) for t in (SIMPLE, MIDDLE, DENSE)]
    assert [s.diffusion_iterations for s in resolved] == [20, 40, 60]
    assert all(s.diffusion_steps == "fixed" and s.diffusion_steps_range == () for s in resolved)
    assert settings.for_text(SIMPLE) == settings.for_text(SIMPLE)  # deterministic per chunk
    # No range: from half the preset's own count to all of it.
    default = load_preset("balanced_v2", diffusion_steps="auto")  # 50 iterations
    assert [default.for_text(t).diffusion_iterations for t in (SIMPLE, MIDDLE, DENSE)] == [25, 38, 50]
    assert load_preset("balanced_auto").for_text(SIMPLE).diffusion_iterations == 30
    assert load_preset("balanced_auto").for_text(DENSE).diffusion_iterations == 60


@pytest.mark.parametrize("changes, message", [
    (dict(diffusion_steps="sometimes"), "diffusion_steps"),
    (dict(diffusion_steps="auto", diffusion_steps_range=[40, 20]), "diffusion_steps_range"),
    (dict(diffusion_steps="auto", diffusion_steps_range=[1, 20]), "diffusion_steps_range"),
    (dict(diffusion_steps="auto", diffusion_steps_range=[5]), "diffusion_steps_range"),
    (dict(diffusion_steps_range=["a", "b"]), "list of whole numbers"),
])
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(UserError, match=message):
        load_preset("balanced_v2", **changes)


def test_audio_key_holds_each_chunks_own_count():
    ar = ar_key(SIMPLE, "voice", auto(), 0, "weights")
    settings = auto()
    keys = {text: audio_key(ar, settings.for_text(text)) for text in (SIMPLE, MIDDLE, DENSE)}
    assert len(set(keys.values())) == 3
    assert audio_key(ar, settings.for_text(SIMPLE)) == keys[SIMPLE]
    # The same audio as a fixed preset at that count: the same key.
    assert keys[SIMPLE] == audio_key(ar, load_preset("balanced_v2", diffusion_iterations=20))
    # "auto" is a diffusion setting: the autoregressive key does not move.
    assert ar_key(SIMPLE, "voice", auto(), 0, "weights") == ar_key(SIMPLE, "voice", load_preset("balanced_v2"), 0, "weights")


def test_keys_of_presets_without_the_new_settings_did_not_change():
    """Every preset leaves diffusion_steps, its range and ar_layers neutral: their keys are the old ones."""
    settings = load_preset("standard")
    old_payload = {"stage": "audio", "ar": "x", "settings": {
        name: getattr(settings, name) for name in DIFFUSION_FIELDS if name not in ("diffusion_steps", "diffusion_steps_range")}}
    assert audio_key("x", settings) == digest(old_payload)
    assert "ar_layers" not in settings.autoregressive_fields()
    assert settings.replace(ar_layers=[0, 1]).autoregressive_fields()["ar_layers"] == [0, 1]


def test_the_engine_refuses_an_unresolved_auto(tiny_models_dir):
    import torch

    from tutortoietts.engine.pipeline import Tortoise

    tts = Tortoise.load(tiny_models_dir)
    voice = tts.random_voice(0)
    latents = torch.zeros(1, 8, tts.autoregressive.model_dim)
    with pytest.raises(ValueError, match="for_text"):
        tts.diffuse(latents, voice, auto(2, 4))
    mel = tts.diffuse(latents, voice, auto(2, 4).for_text(SIMPLE).replace(precision="fp32"))
    assert mel.shape[0] == 1


def test_render_one_runs_the_chunks_own_count():
    from tutortoietts.renderers import RenderTask, render_one

    class Recorder:
        """A stand-in engine: records the settings each stage gets."""

        def __init__(self):
            self.audio_steps = []

        def autoregressive_stage(self, text, voice, settings, seed):
            return object()

        def audio_stage(self, ar, voice, settings, seed):
            import torch

            from tutortoietts.engine.pipeline import Clip

            self.audio_steps.append(settings.diffusion_iterations)
            return Clip(samples=torch.zeros(10))

    engine = Recorder()
    for text in (SIMPLE, MIDDLE, DENSE):
        result = render_one(engine, None, auto(), RenderTask(**task_fields(text)))
        assert result.error is None
    assert engine.audio_steps == [20, 40, 60]


def task_fields(text: str) -> dict:
    import dataclasses

    from tutortoietts.renderers import RenderTask

    names = {field.name for field in dataclasses.fields(RenderTask)}
    values = {"text": text, "seed": 0, "ar": None}
    for name in names - set(values):
        values[name] = "key" if "key" in name else 0
    return values


def test_a_book_renders_with_an_auto_preset(workspace, models, tmp_path):
    """Through the CLI on tiny weights: chunks of different complexity, each with its own count."""
    from tutortoietts.render import RenderRequest, plan_render

    book = tmp_path / "book.md"
    book.write_text(f"# One\n\n{SIMPLE}\n\n{DENSE}\n")
    presets = tmp_path / "presets.toml"
    presets.write_text('[tiny_auto]\nbase = "balanced_auto"\nnum_autoregressive_samples = 2\n'
                       'diffusion_steps_range = [2, 4]\ndiffusion_iterations = 4\nprecision = "fp32"\n')
    env = {**workspace["env"], "TUTORTOIETTS_PRESETS": str(presets)}
    out = tmp_path / "job"
    cli("generate", book, "--voice", workspace["voice"], "--models-dir", models, "--preset", "tiny_auto",
        "--device", "cpu", "--format", "wav", "--out", out, "--seed", "1", env=env)
    assert list(out.rglob("*.wav"))

    import os

    previous = os.environ.get("TUTORTOIETTS_PRESETS")
    os.environ["TUTORTOIETTS_PRESETS"] = str(presets)
    try:
        plan = plan_render(RenderRequest(book=book, voice=str(workspace["voice"]), preset="tiny_auto",
                                         models_dir=models, device="cpu", seed=1, out_dir=out))
    finally:
        if previous is None:
            os.environ.pop("TUTORTOIETTS_PRESETS")
        else:
            os.environ["TUTORTOIETTS_PRESETS"] = previous
    by_text = {chunk.text: chunk for chunk in plan.chunks}
    simple, dense = by_text[SIMPLE], by_text[DENSE]
    for chunk, steps in ((simple, 2), (dense, 4)):
        ar = plan.ar_keys[chunk.cache_key]
        assert chunk.cache_key == audio_key(ar, plan.settings.replace(diffusion_steps="fixed", diffusion_steps_range=[],
                                                                     diffusion_iterations=steps))
