"""`tutortoietts bench --quick` on tiny weights, end to end through the CLI: the report's structure, not its speeds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    # The reference side is its own baseline.
    assert report["sides"]["reference kv-cache"]["speedup"]["end_to_end"] == pytest.approx(1.0)
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
    assert 0 <= fast["code_agreement"] <= 1
    assert all(math.isfinite(value) for value in fast.values())
    assert fast["logits_max_diff"] > 0  # bf16 really ran
    assert set(report["targets"]) and all(isinstance(t["met"], bool) for t in report["targets"].values())


def test_unknown_side_is_one_clear_line(tiny_models_dir):
    done = run_cli("bench", "--quick", "--models-dir", str(tiny_models_dir), "--side", "ours fp64")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: unknown bench side 'ours fp64'")
    assert "Traceback" not in done.stderr
