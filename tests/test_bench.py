"""`tutortoietts bench --quick` on tiny weights, end to end through the CLI: the report's structure, not its speeds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("reference kv-cache", "ours fp32", "ours ultra_fast_v2")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "tutortoietts.cli", *args], env=env, capture_output=True, text=True, timeout=600)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_report(tiny_models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    side_args = [arg for side in SIDES for arg in ("--side", side)]
    done = run_cli("bench", "--quick", "--samplers", "--models-dir", str(tiny_models_dir), "--json", str(out), *side_args)
    print(done.stdout[-6000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_quick_bench_report_structure(quick_report):
    report, stdout = quick_report
    assert set(report) >= {"machine", "options", "config", "sides", "fidelity", "targets"}
    assert positive(report["machine"]["memory_bandwidth_bytes_per_second"])
    assert list(report["sides"]) == list(SIDES)
    stages = ("autoregressive", "rerank", "latents", "diffusion", "vocoder")
    for name, side in report["sides"].items():
        expected = ("autoregressive",) if name == "reference no-cache" else stages
        assert tuple(side["stage_seconds"]) == expected, name
        assert all(positive(seconds) for seconds in side["stage_seconds"].values()), name
        # Every side decodes exactly the forced number of codes.
        assert side["ar_steps"] == report["options"]["code_length"] == 16, name
        for key in ("ar_steps_per_second", "ar_weight_bytes", "achieved_bandwidth_bytes_per_second", "peak_memory_bytes", "load_seconds"):
            assert positive(side[key]), (name, key)
        assert positive(side["speedup"]["autoregressive"])
        if expected == stages:
            for key in ("total_seconds", "audio_seconds", "real_time_factor", "peak_memory_vs_reference"):
                assert positive(side[key]), (name, key)
            assert positive(side["speedup"]["end_to_end"])
    # Speedups are the reference's seconds over the side's, recomputed here from the report's own stage times.
    reference = report["sides"]["reference kv-cache"]
    for name, side in report["sides"].items():
        for stage, seconds in side["stage_seconds"].items():
            assert side["speedup"][stage] == pytest.approx(reference["stage_seconds"][stage] / seconds), (name, stage)
        assert side["total_seconds"] == pytest.approx(sum(side["stage_seconds"].values()))
        assert side["speedup"]["end_to_end"] == pytest.approx(reference["total_seconds"] / side["total_seconds"])
        assert side["ar_steps_per_second"] == pytest.approx(side["ar_steps"] / side["stage_seconds"]["autoregressive"])
    # Peak memory is each worker's own (not inherited from the parent): a tiny model set stays small.
    assert report["sides"]["ours fp32"]["peak_memory_bytes"] < 4e9
    assert report["sides"]["ours ultra_fast_v2"]["settings"]["sampler"] == "dpmpp2m"
    for table in ("seconds per stage", "decode and memory", "fidelity on fixed inputs", "targets", "sampler distance"):
        assert table in stdout
    distances = report["samplers"]["rms_log_mel_distance"]
    assert set(distances) == {"dpmpp2m 10", "dpmpp2m 15", "ddim 15", "ddpm 4 (reference)"}
    assert all(positive(value) for value in distances.values())


def test_quick_bench_fidelity(quick_report):
    report, _ = quick_report
    exact = report["fidelity"]["ours fp32 vs reference"]
    print("[bench] ours fp32 vs reference:", exact)
    # Same weights, same fixed inputs: our exact path is the reference's arithmetic up to rounding.
    assert exact["latents_max_diff"] < 1e-3 and exact["logits_max_diff"] < 1e-3
    assert exact["clvp_scores_max_diff"] < 1e-3
    assert exact["mel_rms_diff"] < 1e-2  # DDPM with the reference's noise order and seed
    fast = report["fidelity"]["ours ultra_fast_v2 vs ours fp32"]
    print("[bench] ultra_fast_v2 vs ours fp32:", fast)
    assert all(math.isfinite(value) for value in fast.values())
    assert fast["logits_max_diff"] > 0  # bf16 really ran
    # Each target's verdict follows from its value and goal (peak memory is the one "at most" goal).
    for name, target in report["targets"].items():
        at_most = "peak memory" in name
        assert target["met"] == (target["value"] <= target["goal"] if at_most else target["value"] >= target["goal"]), name


def test_fidelity_and_targets_on_fixed_inputs():
    """The report's arithmetic on inputs whose answers are known, independently of any timing."""
    from tutortoietts.devtools.bench import fidelity, targets

    codes = torch.arange(16).reshape(2, 8)
    other = codes.clone()
    other[0, :3] = -1  # 3 of 16 sampled codes differ
    other[1, 7] = -1  # and a fourth
    probe = dict(latents=torch.zeros(2, 8, 4), logits=torch.zeros(2, 8, 5), scores=torch.zeros(2), mel=torch.zeros(1, 3, 4),
                 wav=torch.zeros(1, 1, 10), sampled_codes=codes)
    changed = {**probe, "sampled_codes": other, "logits": probe["logits"] + 0.25, "mel": probe["mel"] + 3.0}
    runs = {"ours fp32": [{"files": {"probes": probe}}], "ours bf16": [{"files": {"probes": changed}}]}
    entry = fidelity(runs)["ours bf16 vs ours fp32"]
    assert entry["code_agreement"] == pytest.approx(12 / 16)
    assert entry["logits_max_diff"] == pytest.approx(0.25) and entry["mel_rms_diff"] == pytest.approx(3.0)
    assert entry["latents_max_diff"] == 0.0

    def side(total_speedup, memory_ratio=0.4, ar=3.0, diffusion=5.0):
        return {"speedup": {"end_to_end": total_speedup, "autoregressive": ar, "diffusion": diffusion, "rerank": 1.0,
                            "latents": 1.0, "vocoder": 1.0}, "peak_memory_vs_reference": memory_ratio}

    verdicts = targets({"reference kv-cache": side(1.0), "ours fp32": side(1.2), "ours bf16": side(2.0, ar=1.9),
                        "ours ultra_fast_v2": side(5.2, memory_ratio=0.55)})
    met = {name: target["met"] for name, target in verdicts.items()}
    assert met == {
        "fp32: no stage slower than reference (min stage speedup >= 1)": True,
        "bf16: autoregressive speedup >= 2": False,
        "bf16: diffusion speedup >= 4": True,
        "ultra_fast_v2: end-to-end speedup >= 5": True,
        "ultra_fast_v2: peak memory <= 50% of reference": False,
    }


def test_unknown_side_is_one_clear_line(tiny_models_dir):
    done = run_cli("bench", "--quick", "--models-dir", str(tiny_models_dir), "--side", "ours fp64")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: unknown bench side 'ours fp64'")
    assert "Traceback" not in done.stderr
