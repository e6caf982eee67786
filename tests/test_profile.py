"""`tutortoietts profile` on tiny weights: the stage table, the operator table and a Chrome trace with our ranges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def profiled(tiny_models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    trace, report = folder / "trace.json", folder / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "tutortoietts.cli", "profile", "--preset", "ultra_fast_v2", "--models-dir", str(tiny_models_dir),
         "--codes", "12", "--samples", "2", "--trace", str(trace), "--json", str(report)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    print(done.stdout[-5000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(trace.read_text()), json.loads(report.read_text())


def test_stage_table_adds_up(profiled):
    stdout, _, report = profiled
    assert "stages (ultra_fast_v2" in stdout and "top operators by self time" in stdout and "trace written to" in stdout
    parts = {row["part"]: row for row in report["breakdown"]}
    for part in ("autoregressive: attention", "autoregressive: feed-forward", "autoregressive: sampling (logit processing)",
                 "diffusion: network", "vocoder"):
        assert parts[part]["seconds"] > 0, part
    # The parts of each stage are measured apart from the stage itself: they must fit inside it.
    stages = report["stage_seconds"]
    ar_parts = sum(parts[p]["seconds"] for p in ("autoregressive: attention", "autoregressive: feed-forward",
                                                  "autoregressive: sampling (logit processing)"))
    print(f"[profile] autoregressive {stages['autoregressive']:.3f} s, of which timed parts {ar_parts:.3f} s; "
          f"diffusion {stages['diffusion']:.3f} s, network {parts['diffusion: network']['seconds']:.3f} s")
    assert ar_parts <= stages["autoregressive"] * 1.001
    assert parts["diffusion: network"]["seconds"] <= stages["diffusion"] * 1.001
    assert parts["vocoder"]["seconds"] == stages["vocoder"]
    assert report["real_time_factor"] == pytest.approx(report["total_seconds"] / report["audio_seconds"])
    assert report["peak_memory_bytes"] > 0 and report["real_time_factor"] > 0
    assert report["top_operators"] and all(op["self_seconds"] >= 0 for op in report["top_operators"])
    assert not any(op["name"].startswith("stage:") or "/" in op["name"] for op in report["top_operators"])


def test_trace_holds_our_ranges(profiled):
    _, trace, _ = profiled
    names = {event.get("name", "") for event in trace["traceEvents"]}
    for expected in ("stage:autoregressive", "stage:diffusion", "stage:vocoder", "autoregressive/ar:attention",
                     "autoregressive/ar:sampling", "diffusion/diffusion:network"):
        assert expected in names, expected
    assert any(name.startswith("aten::") for name in names)
    sampling = [event for event in trace["traceEvents"] if event.get("name") == "autoregressive/ar:sampling"]
    assert len(sampling) == 12  # one logit-processing range per forced code (--codes 12)
