"""Scale simulation for `--ray`: the real driver (object store, chunk files, job database, cache, progress) fed by actors that sleep.

Each simulated actor takes a fixed time per chunk and returns what a real one would: a chunk's audio
and its autoregressive result, at realistic sizes (12 s of 24 kHz float audio, 260 latent frames of
1024 floats, 16 candidates' codes: about 2.2 MB a chunk). The driver side is the one `generate`
runs: plan_render, prepare_job, gate.render_gated with a RayRenderer. Nothing is rendered and no
torch is loaded in the actors, so 64 of them fit on a small machine.

    python -m tutortoietts.devtools.cluster_sim --actors 1 2 8 32 64 --chunk-seconds 2

Scaling efficiency = throughput / (actors x one actor's throughput); the driver's own time per
chunk (its wall time not spent waiting on Ray) says where it saturates: at chunk_seconds / cost actors.
The same sleepers, with fail_on / die_on, let the tests make chunks that raise or kill their actor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AR_WIDTH = 1024  # the autoregressive model's latent width (full size)
DIFFUSION_WIDTH = 2048  # the diffusion conditioning's width (full size: 2 x 1024)


@dataclass(frozen=True)
class SleepSpec:
    """A simulated engine: `seconds` per chunk, results of realistic size; fail_on / die_on for fault tests."""

    seconds: float = 2.0
    audio_seconds: float = 12.0
    latent_frames: int = 260
    candidates: int = 16
    fail_on: str | None = None  # a chunk whose text holds this comes back as that chunk's error
    die_on: str | None = None  # a chunk whose text holds this kills its actor's process (like an OOM kill)

    def start(self, threads: int) -> "SleepWorker":
        return SleepWorker(self)


class SleepWorker:
    device = "sleeper"

    def __init__(self, spec: SleepSpec):
        self.spec = spec

    def voice(self, request: tuple) -> tuple:
        return np.zeros((1, AR_WIDTH), np.float32), np.zeros((1, DIFFUSION_WIDTH), np.float32)

    def render(self, tasks: list[tuple], voice: tuple) -> list[dict]:
        spec, out = self.spec, []
        for name, text, seed, ar in tasks:
            start = time.perf_counter()
            if spec.die_on is not None and spec.die_on in text:
                os._exit(1)
            time.sleep(spec.seconds)
            record = {"name": name, "samples": None, "sample_rate": 24000, "ar": None, "error": None,
                      "seconds": time.perf_counter() - start}
            if spec.fail_on is not None and spec.fail_on in text:
                record["error"] = "RuntimeError: simulated failure"
                out.append(record)
                continue
            # Audio that depends on the seed only, as the real engine's does.
            record["samples"] = np.full(int(spec.audio_seconds * 24000), (seed % 1000) / 1e4, np.float32)
            if ar is None:
                record["ar"] = {"codes": np.zeros((spec.candidates, spec.latent_frames), np.int64),
                                "scores": np.zeros(spec.candidates, np.float32), "chosen": 0,
                                "latents": np.full((1, spec.latent_frames, AR_WIDTH), 0.5, np.float32),
                                "stopped": None, "timings": {}}
            out.append(record)
        return out


def write_book(path: Path, chunks: int) -> Path:
    """A manuscript of exactly `chunks` short distinct paragraphs, one chunk each (no headings: a
    heading is a chunk of its own, and the counts would not divide evenly between the actors)."""
    path.write_text("\n\n".join(f"Paragraph {number + 1} of the simulated book says very little." for number in range(chunks)))
    return path


def run_once(actors: int, chunk_seconds: float, per_actor: int, root: Path, models_dir: Path) -> dict:
    """One render of actors x per_actor chunks through the real driver loop; its measures."""
    from tutortoietts.cache import Cache
    from tutortoietts.cluster import Placement, RayRenderer
    from tutortoietts.jobs import Job
    from tutortoietts.gate import GateOptions, render_gated
    from tutortoietts.render import ProgressTracker, RenderRequest, plan_render, prepare_job

    work = root / f"run-{actors}-{chunk_seconds:g}"
    work.mkdir(parents=True, exist_ok=True)
    book = write_book(work / "book.md", actors * per_actor)
    request = RenderRequest(book=book, voice="random", preset="ultra_fast_v2", out_dir=work / "job", fmt="wav",
                            models_dir=models_dir, device="cpu", cache_dir=work / "cache", ray_address="local")
    plan = plan_render(request)
    seen = {"events": 0}

    def progress(event):  # what a display reads from each event: every worker's numbers
        seen["events"] += 1
        sum(stat.chunks for stat in event.workers)

    with Cache(request.cache_dir) as cache, Job.open(plan.job_dir) as job:
        prepare_job(job, plan, request)
        pending = job.rows("pending")
        tracker = ProgressTracker(progress, 0, len(pending), len(pending))
        renderer = RayRenderer(SleepSpec(seconds=chunk_seconds), "local", "cpu", lambda tts: tts.random_voice(0),
                               placement=Placement(actors, 0, 0, "cpu"), start_together=True)
        tracker.watch(renderer)
        # The real driver loop, quality checks included (no retakes: one render per chunk).
        counts = render_gated(job, plan, request, cache, renderer, pending, tracker, GateOptions(retries=0))
        renderer.close()
    chunks = counts.rendered + counts.ar_cache
    shutil.rmtree(work, ignore_errors=True)  # 3 MB a chunk on disk (file, cached audio and codes)
    window = renderer.last_result_at - renderer.first_sent_at
    busy = window - renderer.wait_seconds
    return {"actors": actors, "chunk_seconds": chunk_seconds, "chunks": chunks, "failed": len(counts.failed),
            "seconds": window, "throughput": chunks / window, "ideal": actors / chunk_seconds if chunk_seconds else None,
            "driver_ms_per_chunk": 1000 * busy / chunks}


def main(argv: list[str] | None = None) -> None:
    import logging
    import tempfile

    import ray

    from tutortoietts.engine.checkpoints import write_random_checkpoints

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 8, 32, 64])
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--per-actor", type=int, default=8, help="chunks per actor in each run")
    parser.add_argument("--driver-limit", action="store_true", help="also run the largest count with 0 s chunks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cluster-sim-"))
    os.environ.setdefault("TUTORTOIETTS_CACHE", str(root / "weights-cache"))
    models = write_random_checkpoints(root / "models", "tiny", seed=0)  # for the plan's fingerprint only
    ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=1 << 30, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    rows = []
    runs = [(count, args.chunk_seconds) for count in args.actors]
    if args.driver_limit:
        runs.append((max(args.actors), 0.0))
    for actors, seconds in runs:
        row = run_once(actors, seconds, args.per_actor, root, models)
        rows.append(row)
        print(json.dumps(row), flush=True)
    one = next((row["throughput"] for row in rows if row["actors"] == 1 and row["chunk_seconds"]), None)
    print(f"\n{'actors':>6} {'chunk s':>7} {'chunks':>6} {'wall s':>7} {'chunks/s':>9} {'vs ideal':>8} "
          f"{'efficiency':>10} {'driver ms/chunk':>15}")
    for row in rows:
        ideal = f"{row['throughput'] / row['ideal']:.1%}" if row["ideal"] else "-"
        efficiency = (f"{row['throughput'] / (row['actors'] * one):.1%}" if one and row["chunk_seconds"] else "-")
        row["efficiency"] = row["throughput"] / (row["actors"] * one) if one and row["chunk_seconds"] else None
        print(f"{row['actors']:>6} {row['chunk_seconds']:>7g} {row['chunks']:>6} {row['seconds']:>7.2f} "
              f"{row['throughput']:>9.2f} {ideal:>8} {efficiency:>10} {row['driver_ms_per_chunk']:>15.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
