"""This machine's rendering speed, as `generate` measured it, and estimates for a preset from it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tutortoietts.paths import cache_dir

KEEP_RUNS = 50  # the record stays small; the latest runs say most about this machine now
RECENT = 5  # runs averaged for an estimate

# Where nothing was measured here yet: compute seconds per second of audio from a cost model
# fitted to README's benchmark (full-size weights, 100 codes = 4.64 s of audio per chunk).
#   cpu: 2-core AMD EPYC, bf16: AR+rerank 9.8 s + 0.32 s per sample, diffusion 0.40 s per network
#        pass, latents+vocoder 1.2 s; fp32 about 2.1x that.
#   cuda: one H100: decoding is launch-bound (~1.2 s per 100 codes whatever the batch), diffusion
#        0.025 s per pass.
DEFAULT_MODEL = {
    "cpu": {"base": 2.10, "per_sample": 0.0695, "per_pass": 0.0862, "fixed": 0.25, "fp32": 2.1,
            "source": "README's benchmark on a 2-core AMD EPYC CPU"},
    "cuda": {"base": 0.27, "per_sample": 0.002, "per_pass": 0.0053, "fixed": 0.03, "fp32": 1.1,
             "source": "README's benchmark on one H100 GPU"},
}


@dataclass(frozen=True)
class Speed:
    seconds_per_audio_second: float
    source: str  # where the number comes from, said to the user


def record_path() -> Path:
    return cache_dir() / "speed.json"


def device_kind(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def weights_id(models_dir: Path | None) -> str:
    """The weights' fingerprint ("" when none are found): tiny test weights run far faster than real ones.

    The folder is found as find_models_dir finds it, without opening the checkpoints (a dry run
    should not read gigabytes); the fingerprint hashes sizes and a MiB of each, memoised.
    """
    from tutortoietts.engine.checkpoints import FILES, search_folders, weights_fingerprint

    for folder in search_folders(models_dir):
        if all((folder / name).is_file() for name in FILES.values()):
            try:
                return weights_fingerprint(folder)
            except OSError:
                return ""
    return ""


def read_runs() -> list[dict]:
    try:
        data = json.loads(record_path().read_text(encoding="utf-8"))
        return [run for run in data.get("runs", []) if isinstance(run, dict)]
    except (OSError, ValueError, AttributeError):
        return []  # no record, or a damaged one: estimates fall back to the defaults


def record_speed(preset: str, device: str, wall_seconds: float, audio_seconds: float, models_dir: Path | None) -> None:
    """Adds one run (wall seconds for audio seconds) to the record; a record that cannot be written is skipped."""
    run = {"preset": preset, "device": device_kind(device), "weights": weights_id(models_dir),
           "wall_seconds": round(wall_seconds, 3), "audio_seconds": round(audio_seconds, 3),
           "when": time.strftime("%Y-%m-%d %H:%M", time.localtime())}
    runs = [*read_runs(), run][-KEEP_RUNS:]
    path = record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"runs": runs}, indent=1), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass  # the estimate is a convenience; a full or read-only disk must not fail a finished book


def modelled(settings, kind: str) -> float:
    model = DEFAULT_MODEL[kind]
    passes = settings.diffusion_iterations * (2 if settings.cond_free else 1)
    seconds = model["base"] + model["per_sample"] * settings.num_autoregressive_samples + model["per_pass"] * passes + model["fixed"]
    return seconds * (model["fp32"] if settings.precision == "fp32" else 1.0)


def estimate(preset: str, settings, device: str, models_dir: Path | None) -> Speed:
    """Seconds of rendering per second of audio for this preset here: measured, scaled, or the default."""
    kind = device_kind(device)
    weights = weights_id(models_dir)
    runs = [run for run in read_runs() if run.get("device") == kind and run.get("weights") == weights]
    same = [run for run in runs if run.get("preset") == preset][-RECENT:]
    if same:
        ratio = sum(run["wall_seconds"] for run in same) / sum(run["audio_seconds"] for run in same)
        return Speed(ratio, f"measured on this machine ({kind}): {len(same)} generate run(s) with {preset}, the last {same[-1]['when']}")
    if runs:
        from tutortoietts.settings import load_preset

        other = runs[-RECENT:]
        ratio = sum(run["wall_seconds"] for run in other) / sum(run["audio_seconds"] for run in other)
        try:
            base = [load_preset(run["preset"]) for run in other]
            scale = modelled(settings, kind) / (sum(modelled(s, kind) for s in base) / len(base))
        except Exception:  # a preset since deleted from the user's file: no scaling
            scale = 1.0
        presets = ", ".join(sorted({run["preset"] for run in other}))
        return Speed(ratio * scale, f"measured on this machine ({kind}) with {presets}, scaled to {preset} by its samples and diffusion steps")
    return Speed(modelled(settings, kind), f"no run measured on this machine yet: a default from {DEFAULT_MODEL[kind]['source']}, full-size weights")
