"""Layer ablation and the research reports: layer specs, the identity skip, the engine's ar_layers, weights provenance, bench flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tutortoietts.devtools.ablation import ablation_study, parse_layers, sweep_specs
from tutortoietts.devtools.research import StudyInputs
from tutortoietts.engine import checkpoints
from tutortoietts.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tutortoietts.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


# -- layer specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, skipped", [
    ("20-29", tuple(range(20, 30))),
    ("every-3rd", (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)),
    ("every-2nd", tuple(range(1, 30, 2))),
    ("0,5,7", (0, 5, 7)),
    ("last-4", (26, 27, 28, 29)),
    ("first-2,every-10th", (0, 1, 9, 19, 29)),
    ("3", (3,)),
])
def test_layer_specs(spec, skipped):
    assert parse_layers(spec, 30) == skipped


@pytest.mark.parametrize("spec, message", [
    ("25-35", "block 30"), ("every-1st", "every-N"), ("0-29", "every block"), ("9-3", "backwards"),
    ("lots", "not understood"), ("", "skips no block"),
])
def test_bad_layer_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_layers(spec, 30)


def test_sweep():
    assert sweep_specs(30) == ["20-29", "last-5", "first-5", "every-3rd", "every-2nd"]
    assert sweep_specs(2) == ["1", "first-1"]  # last-1 and every-2nd of 2 blocks skip block 1 again: left out
    for total in (2, 3, 8, 30):
        for spec in sweep_specs(total):
            assert 0 < len(parse_layers(spec, total)) < total


# -- the skip is an identity; the engine applies ar_layers ---------------------------------------


@pytest.fixture(scope="module")
def identity_block_models(tmp_path_factory):
    """Tiny random weights whose block 1 adds nothing (its output projections zero): skipping it must change nothing."""
    folder = checkpoints.write_random_checkpoints(tmp_path_factory.mktemp("identity-block"), "tiny", seed=0)
    path = folder / "autoregressive.pth"
    state = torch.load(path, weights_only=True)
    for name in ("gpt.h.1.attn.c_proj.weight", "gpt.h.1.attn.c_proj.bias", "gpt.h.1.mlp.c_proj.weight", "gpt.h.1.mlp.c_proj.bias"):
        state[name].zero_()
    torch.save(state, path)
    return folder


def test_skipping_a_block_that_adds_nothing_changes_nothing_and_a_real_one_does(identity_block_models):
    report = ablation_study(StudyInputs(models_dir=identity_block_models, num_samples=2, code_length=12), ["1", "0"])
    print(json.dumps(report["variants"], indent=1))
    nothing, real = report["variants"]
    assert nothing["skipped"] == [1] and nothing["layers_kept"] == 1
    assert nothing["kl_nats_per_code"] == pytest.approx(0.0, abs=1e-6)
    assert nothing["top1_agreement"] == 1.0 and nothing["positions"] == 2 * 12
    assert real["kl_nats_per_code"] > 0.01 and real["top1_agreement"] < 1.0
    assert report["full"]["decode_steps"] == 12 and nothing["codes_per_second"] > 0
    assert report["weights"]["kind"] == "random" and "changed since" in report["weights"]["detail"]
    assert report["quality_warning"] is not None


def test_engine_runs_the_presets_ar_layers(tiny_models_dir):
    from tutortoietts.engine.pipeline import Tortoise
    from tutortoietts.settings import load_preset

    tts = Tortoise.load(tiny_models_dir)
    voice = tts.random_voice(0)
    text_ids = tts.tokenize("One small test.")
    settings = load_preset("ultra_fast_v2", num_autoregressive_samples=2, max_mel_tokens=10, precision="fp32")
    model = tts.autoregressive

    @torch.inference_mode()
    def direct(skipped):
        model.gpt.skipped = frozenset(skipped)
        generator = tts._generator(3, "autoregressive")
        try:
            return model.sample(voice.autoregressive, text_ids, num_samples=2, max_mel_tokens=10, temperature=settings.temperature,
                                top_p=settings.top_p, repetition_penalty=settings.repetition_penalty, generator=generator).cpu()
        finally:
            model.gpt.skipped = frozenset()

    ablated = tts.sample_raw_codes(text_ids, voice, settings.replace(ar_layers=[0]), 3)
    assert torch.equal(ablated, direct({1}))
    full = tts.sample_raw_codes(text_ids, voice, settings, 3)  # the next plain preset runs every block again
    assert torch.equal(full, direct(set()))
    assert not torch.equal(full, ablated)
    with pytest.raises(UserError, match="block 5"):
        tts.sample_raw_codes(text_ids, voice, settings.replace(ar_layers=[0, 5]), 3)


# -- which weights a report ran on -----------------------------------------------------------------


def test_weights_origin(tmp_path):
    done = run_cli("models", "init-random", str(tmp_path / "w"), "--config", "tiny", "--seed", "4")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "w"
    record = json.loads((folder / checkpoints.ORIGIN_FILE).read_text())
    assert record["origin"] == "random" and record["seed"] == 4 and record["config"] == "tiny"
    origin = checkpoints.weights_origin(folder)
    assert origin["kind"] == "random" and "changed" not in origin["detail"] and origin["sha256"] is None

    # Without the record nothing is known: every file's sha256 is listed for a reader to check.
    (folder / checkpoints.ORIGIN_FILE).unlink()
    origin = checkpoints.weights_origin(folder)
    assert origin["kind"] == "unverified" and set(origin["sha256"]) == set(checkpoints.FILES.values())
    assert origin["sha256"]["clvp2.pth"] == checkpoints.file_sha256(folder / "clvp2.pth")

    # What `models download` records after checking each file against the hub's sha256.
    verified = {name: checkpoints.file_sha256(folder / name) for name in checkpoints.FILES.values()}
    (folder / checkpoints.ORIGIN_FILE).write_text(json.dumps({"origin": "official", "sha256": verified}))
    assert checkpoints.weights_origin(folder)["kind"] == "official"
    verified["clvp2.pth"] = "0" * 64  # a file that is not the one the hub served
    (folder / checkpoints.ORIGIN_FILE).write_text(json.dumps({"origin": "official", "sha256": verified}))
    assert checkpoints.weights_origin(folder)["kind"] == "unverified"


# -- through bench -------------------------------------------------------------------------------------


def test_bench_studies_through_the_cli(tiny_models_dir, tmp_path):
    out = tmp_path / "studies.json"
    done = run_cli("bench", "--quick", "--studies-only", "--models-dir", str(tiny_models_dir), "--drop-layers", "1",
                   "--ablate", "--speculative", "--quality", "--json", str(out))
    print(done.stdout[-3000:], done.stderr[-2000:])
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [v["spec"] for v in report["ablation"]["variants"]] == ["1", "first-1"]
    assert all(v["quality"]["mcd"] is not None for v in report["ablation"]["variants"])
    assert [entry["k"] for entry in report["speculation"]["speculative"]] == [2, 4, 8]
    assert all(0 <= entry["acceptance_rate"] <= 1 for entry in report["speculation"]["speculative"])
    assert report["speculation"]["draft"] == "self, first 1 layers"
    assert report["ablation"]["weights"]["kind"] == "random"
    assert "weights: RANDOM" in done.stdout
    assert "warning:" in done.stdout and "measure nothing" in done.stdout  # quality columns on random weights


@pytest.mark.parametrize("args, message", [
    (["--drop-layers", "7"], "names block 7"),
    (["--studies-only"], "needs a study"),
    (["--speculative", "--draft-layers", "3"], "1 to 2 layers"),
])
def test_bench_study_mistakes_are_one_line(tiny_models_dir, args, message):
    extra = [] if "--studies-only" in args else ["--studies-only"]
    done = run_cli("bench", "--quick", "--models-dir", str(tiny_models_dir), *extra, *args)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_bench_quality_compares_each_side_with_ours_fp32(tiny_models_dir, tmp_path):
    out = tmp_path / "quality.json"
    done = run_cli("bench", "--quick", "--models-dir", str(tiny_models_dir), "--side", "ours fp32", "--side", "ours int8",
                   "--quality", "--json", str(out))
    print(done.stdout[-3000:], done.stderr[-2000:])
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    entry = report["quality"]["ours int8"]
    assert set(entry["texts"]) == {"simple", "complex pronunciation", "long form", "emotional"}
    assert entry["mcd"] is not None and entry["log_mel"] is not None
    assert report["weights"]["kind"] == "random"
    side = report["sides"]["ours int8"]
    assert side["time_to_first_audio_seconds"] > 0 and side["tokens_per_second"] > 0
    assert "2 x 16, 4 ddpm" in done.stdout  # the steps column reads diffusion_iterations, not diffusion_steps' "fixed"
    assert "warning:" in done.stdout
