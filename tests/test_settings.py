"""Presets reproduce the reference's tts_with_preset; validation gives clear messages."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import pytest

from tutortoietts.errors import UserError
from tutortoietts.settings import (
    AUTOREGRESSIVE_FIELDS, DIFFUSION_FIELDS, FIELD_NAMES, HIFI_FIELDS, Settings, load_preset, preset_names,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_user_presets(monkeypatch, tmp_path):
    # Never read the developer's own ~/.config file.
    monkeypatch.delenv("TUTORTOIETTS_PRESETS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def reference_preset(name: str) -> dict:
    """What the reference's tts_with_preset passes to tts(), completed with tts()'s defaults.

    Read from the reference's source (its literals), so this test sees the reference's numbers,
    not ours copied twice.
    """
    import ast

    from tortoise import api

    source = inspect.getsource(api.TextToSpeech.tts_with_preset)
    tree = ast.parse(inspect.cleandoc("\n" + source) if source.startswith(" ") else source)
    literals = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            literals[node.targets[0].id] = ast.literal_eval(node.value)
    defaults = {
        k: p.default for k, p in inspect.signature(api.TextToSpeech.tts).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    values = {k: defaults[k] for k in FIELD_NAMES if k in defaults}
    values.update(literals["settings"])
    values.update(literals["presets"][name])
    return values


@pytest.mark.parametrize("name", ["ultra_fast", "fast", "standard", "high_quality"])
def test_reference_presets_reproduced(name):
    expected = reference_preset(name)
    ours = load_preset(name)
    print(name, expected)
    for key, value in expected.items():
        assert getattr(ours, key) == value, key
        assert type(getattr(ours, key)) is type(value) or isinstance(value, (int, float)), key
    assert ours.sampler == "ddpm" and ours.precision == "fp32"
    # Every field of the preset is spelled out in the file: nothing falls back to a default.
    import tomllib

    table = tomllib.loads((ROOT / "tutortoietts" / "presets.toml").read_text())[name]
    assert set(table) == set(FIELD_NAMES)


def test_v2_presets():
    quick = load_preset("ultra_fast_v2")
    assert (quick.num_autoregressive_samples, quick.diffusion_iterations, quick.temperature, quick.top_p) == (8, 15, 0.65, 0.75)
    assert (quick.diffusion_temperature, quick.length_penalty, quick.repetition_penalty, quick.cond_free_k) == (0.8, 0.8, 2.5, 1.5)
    assert quick.cond_free is True and quick.sampler == "dpmpp2m" and quick.precision == "auto"
    balanced = load_preset("balanced_v2")
    assert (balanced.num_autoregressive_samples, balanced.diffusion_iterations, balanced.temperature, balanced.top_p) == (32, 50, 0.7, 0.85)
    assert (balanced.repetition_penalty, balanced.length_penalty, balanced.cond_free_k, balanced.diffusion_temperature) == (2.0, 1.0, 2.0, 1.0)
    assert balanced.sampler == "dpmpp2m" and balanced.precision == "auto"


def test_root_presets_file_is_the_package_one():
    assert (ROOT / "presets.toml").read_text() == (ROOT / "tutortoietts" / "presets.toml").read_text()


def test_settings_names_are_reference_keywords():
    from tortoise import api

    keywords = set(inspect.signature(api.TextToSpeech.tts).parameters)
    ours_only = {"sampler", "precision", "autoregressive_batch_size", "decoder", "diffusion_steps",
                 "diffusion_steps_range", "ar_layers"}
    assert set(FIELD_NAMES) - ours_only <= keywords


def test_overrides_and_frozen():
    settings = load_preset("fast", temperature=0.5, precision=None, diffusion_iterations=10)
    assert settings.temperature == 0.5 and settings.precision == "fp32" and settings.diffusion_iterations == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.temperature = 1.0
    assert settings.replace(top_p=0.5).top_p == 0.5
    assert isinstance(load_preset("fast", temperature=1).temperature, float)


def test_stage_fields_split():
    settings = load_preset("standard")
    assert set(AUTOREGRESSIVE_FIELDS) | set(DIFFUSION_FIELDS) | set(HIFI_FIELDS) == set(FIELD_NAMES)
    assert settings.replace(autoregressive_batch_size=4).autoregressive_fields() != settings.autoregressive_fields()
    assert settings.batch_size() == 16 and load_preset("ultra_fast_v2").batch_size() == 8
    changed = settings.replace(diffusion_iterations=7, sampler="ddim", cond_free_k=1.0)
    assert changed.autoregressive_fields() == settings.autoregressive_fields()
    assert changed.diffusion_fields() != settings.diffusion_fields()
    assert settings.replace(top_p=0.3).diffusion_fields() == settings.diffusion_fields()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(temperature=0), "temperature = 0.0 is out of range"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=0), "top_p"),
        (dict(num_autoregressive_samples=0), "num_autoregressive_samples"),
        (dict(diffusion_iterations=4001), "between 2 and 4000"),
        (dict(max_mel_tokens=605), "between 1 and 604"),
        (dict(cond_free_k=-1), "cond_free_k"),
        (dict(sampler="euler"), "one of ddpm, ddim, dpmpp2m"),
        (dict(precision="fp64"), "one of auto, fp32"),
        (dict(num_autoregressive_samples=2.5), "must be a whole number"),
        (dict(temperature="hot"), "must be a number"),
        (dict(cond_free="yes"), "must be true or false"),
        (dict(tempurature=0.5), "did you mean temperature?"),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(UserError) as caught:
        load_preset("fast", **overrides)
    print(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_preset_lists_known():
    with pytest.raises(UserError) as caught:
        load_preset("fastest")
    print(caught.value)
    for name in ["ultra_fast", "fast", "standard", "high_quality", "ultra_fast_v2", "balanced_v2"]:
        assert name in str(caught.value)


def test_user_presets(monkeypatch, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[fast]\ntemperature = 0.6\n\n[narrator]\nbase = "ultra_fast_v2"\nnum_autoregressive_samples = 4\n\n[bare]\ndiffusion_iterations = 3\n')
    monkeypatch.setenv("TUTORTOIETTS_PRESETS", str(path))
    assert load_preset("fast").temperature == 0.6
    assert load_preset("fast").num_autoregressive_samples == 96
    narrator = load_preset("narrator")
    assert narrator.num_autoregressive_samples == 4 and narrator.sampler == "dpmpp2m"
    assert load_preset("bare") == Settings(diffusion_iterations=3)
    assert "narrator" in preset_names()


def test_user_presets_default_location(tmp_path, monkeypatch):
    folder = tmp_path / "config" / "tutortoietts"
    folder.mkdir(parents=True)
    (folder / "presets.toml").write_text("[standard]\ntop_p = 0.9\n")
    assert load_preset("standard").top_p == 0.9


@pytest.mark.parametrize(
    "content, message",
    [
        ("[fast\n", "not valid TOML"),
        ("[fast]\ntop_pp = 0.9\n", "did you mean top_p?"),
        ("[fast]\ntop_p = 2.0\n", "top_p"),
        ('[x]\nbase = "nope"\n', "not a known preset"),
        ("fast = 3\n", "must be a table"),
    ],
)
def test_bad_user_file(monkeypatch, tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    monkeypatch.setenv("TUTORTOIETTS_PRESETS", str(path))
    with pytest.raises(UserError) as caught:
        load_preset("fast")
        load_preset("x")
    print(caught.value)
    assert message in str(caught.value)


def test_missing_explicit_user_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TUTORTOIETTS_PRESETS", str(tmp_path / "absent.toml"))
    with pytest.raises(UserError, match="does not exist"):
        load_preset("fast")


def test_blame_falls_on_the_override_or_on_the_preset(monkeypatch, tmp_path):
    with pytest.raises(UserError) as caught:
        load_preset("fast", top_p=1.5)  # `--set top_p=1.5`: the preset is fine, the override is not
    assert str(caught.value).startswith("setting top_p = 1.5 is out of range")
    path = tmp_path / "mine.toml"
    path.write_text("[fast]\ntop_p = 2.0\n")
    monkeypatch.setenv("TUTORTOIETTS_PRESETS", str(path))
    with pytest.raises(UserError) as caught:
        load_preset("fast", temperature=0.5)  # a valid override on a broken preset: the preset is named
    assert str(caught.value).startswith("preset 'fast': setting top_p = 2.0")


# ---------------------------------------------------------------------------------------------
# Every precondition of the engine is a settings rule: refused by load_preset (so `--set` fails in
# one line before planning) and by the engine's own check with the same words.


def _sampling(**change):
    from tutortoietts.engine.decoding import validate_sampling

    values = dict(num_samples=4, max_mel_tokens=100, temperature=0.8, top_p=0.8, repetition_penalty=2.0, batch_size=None)
    values.update(change)
    validate_sampling(**values)


def _schedule(sampler="ddpm", steps=10):
    from tutortoietts.engine import samplers

    samplers.schedule_for(sampler, steps)


def _precision(precision):
    import torch

    from tutortoietts.engine.pipeline import resolve_precision

    resolve_precision(precision, torch.device("cpu"))


# (setting, a value the engine cannot take, the nearest one it can, the engine's own check or None
# where the engine takes any value of the right type)
PRECONDITIONS = [
    ("num_autoregressive_samples", 0, 1, lambda v: _sampling(num_samples=v)),
    ("max_mel_tokens", 0, 1, lambda v: _sampling(max_mel_tokens=v)),
    ("max_mel_tokens", 605, 604, lambda v: _sampling(max_mel_tokens=v)),
    ("temperature", 0.0, 1e-3, lambda v: _sampling(temperature=v)),
    ("temperature", math.inf, 1e6, lambda v: _sampling(temperature=v)),
    ("top_p", 0.0, 1e-3, lambda v: _sampling(top_p=v)),
    ("top_p", 1.001, 1.0, lambda v: _sampling(top_p=v)),
    ("repetition_penalty", 0.0, 1e-3, lambda v: _sampling(repetition_penalty=v)),
    ("repetition_penalty", math.nan, 1.0, lambda v: _sampling(repetition_penalty=v)),
    ("diffusion_iterations", 1, 2, lambda v: _schedule("ddpm", v)),
    ("diffusion_iterations", 1, 2, lambda v: _schedule("ddim", v)),
    ("diffusion_iterations", 1, 2, lambda v: _schedule("dpmpp2m", v)),
    ("diffusion_iterations", 4001, 4000, lambda v: _schedule("dpmpp2m", v)),
    ("sampler", "euler", "ddim", lambda v: _schedule(v)),
    ("precision", "fp64", "bf16", _precision),
    ("length_penalty", math.nan, -3.0, None),
    ("cond_free_k", -0.5, 0.0, None),
    ("diffusion_temperature", -0.1, 0.0, None),
    ("autoregressive_batch_size", -1, 0, None),
]


@pytest.mark.parametrize("name, refused, accepted, engine_check", PRECONDITIONS,
                         ids=[f"{p[0]}={p[1]}-{i}" for i, p in enumerate(PRECONDITIONS)])
def test_engine_preconditions_are_settings_rules(name, refused, accepted, engine_check):
    with pytest.raises(UserError) as caught:
        load_preset("fast", **{name: refused})
    message = str(caught.value)
    assert message.startswith(f"setting {name} = ") and "out of range" in message and "\n" not in message, message
    assert getattr(load_preset("fast", **{name: accepted}), name) == accepted
    if engine_check is None:
        return
    with pytest.raises(UserError) as engine_caught:
        engine_check(refused)
    if name != "precision":  # the device-aware check in the pipeline words it its own way
        assert str(engine_caught.value) == message  # one rule, one sentence
    engine_check(accepted)


def test_every_ranged_setting_has_one_rule():
    from tutortoietts.engine import limits

    assert set(limits.RULES) == set(FIELD_NAMES) - {"cond_free"}  # a bool needs no range
    for name in ("ultra_fast", "fast", "standard", "high_quality", "ultra_fast_v2", "balanced_v2"):
        settings = load_preset(name)
        for rule_name, rule in limits.RULES.items():
            assert rule.ok(getattr(settings, rule_name)), (name, rule_name)


def test_one_diffusion_step_would_return_the_noise():
    """Why the minimum is 2: the reference's spacing puts a lone step at timestep 0, where the
    signal is all but untouched by noise, so the sampler would hand back its starting noise."""
    import torch

    from tutortoietts.engine import samplers

    assert samplers.spaced_timesteps(4000, 1) == [0]
    assert samplers.trained_alphas_cumprod()[0] > 0.99997
    # Two steps span the schedule (pure noise -> clean), and every sampler completes them.
    for sampler in ("ddpm", "ddim", "dpmpp2m"):
        schedule = samplers.schedule_for(sampler, 2)
        assert schedule.timesteps[0] == 0 and schedule.timesteps[-1] == 3999
        x = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(0))
        out = samplers.run_sampler(sampler, lambda x, i: samplers.Prediction(torch.zeros_like(x), None), schedule, x,
                                   generator=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, x)  # the two steps moved it: not the starting noise handed back


@pytest.mark.parametrize("assignment, words", [
    ("diffusion_iterations=1", "between 2 and 4000"),
    ("top_p=0", "greater than 0 and at most 1"),
    ("sampler=euler", "one of ddpm, ddim, dpmpp2m"),
    ("max_mel_tokens=605", "between 1 and 604"),
])
def test_refused_setting_stops_the_cli_before_planning(assignment, words, workspace, tiny_models_dir, tmp_path,
                                                       monkeypatch, capsys):
    from tests.cli_support import FAST, cli_in_process, one_error_line

    book = tmp_path / "book.md"
    book.write_text("# A\n\n## One\n\nHello there, a chunk that would render.\n")
    monkeypatch.chdir(tmp_path)  # where a job folder would appear by default
    monkeypatch.setenv("TUTORTOIETTS_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    result = cli_in_process("generate", book, "--voice", workspace["voice"], "--models-dir", tiny_models_dir, *FAST,
                            "--format", "wav", "--set", assignment, monkeypatch=monkeypatch, capsys=capsys)
    line = one_error_line(result)  # exit 1, one line, no traceback
    key = assignment.split("=")[0]
    assert line.startswith(f"error: setting {key} = ") and words in line, line
    assert not result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["book.md"], "a job folder was created"
    assert not (tmp_path.parent / f"{tmp_path.name}-cache").exists(), "the cache was opened"


def test_refused_setting_in_a_real_process(workspace, tiny_models_dir, tmp_path):
    from tests.cli_support import FAST, cli, one_error_line

    book = tmp_path / "book.md"
    book.write_text("# A\n\n## One\n\nHello there.\n")
    out = tmp_path / "job"
    result = cli("generate", book, "--voice", workspace["voice"], "--models-dir", tiny_models_dir, *FAST, "--format",
                 "wav", "--out", out, "--set", "diffusion_iterations=1", env=workspace["env"], check=False)
    line = one_error_line(result)
    assert line == ("error: setting diffusion_iterations = 1 is out of range: it must be between 2 and 4000 "
                    "(the diffusion model's trained steps)")
    assert not out.exists()
