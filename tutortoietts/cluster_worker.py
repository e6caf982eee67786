"""Inside a Ray actor (cluster.py): the loaded engine, and what crosses the object store as numpy arrays.

Imports neither torch nor Ray at import time, so that the scale simulation's actors
(devtools/cluster_sim.py) run without torch.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from tutortoietts.errors import UserError


# ---------------------------------------------------------------- what crosses the object store


def ar_to_wire(ar) -> dict:
    """An ARResult as numpy arrays (zero-copy in Ray's object store, and no torch needed to carry it)."""
    return {"codes": ar.codes.numpy(), "scores": ar.scores.numpy(), "chosen": int(ar.chosen),
            "latents": ar.latents.numpy(), "stopped": None if ar.stopped is None else ar.stopped.numpy(),
            "timings": dict(ar.timings)}


def as_tensor(array):
    import numpy as np
    import torch

    return torch.from_numpy(np.array(array, copy=True))  # the store's arrays are read-only views


def ar_from_wire(wire: dict):
    from tutortoietts.engine.pipeline import ARResult

    stopped = wire.get("stopped")
    return ARResult(as_tensor(wire["codes"]), as_tensor(wire["scores"]), int(wire["chosen"]), as_tensor(wire["latents"]),
                    None if stopped is None else as_tensor(stopped), dict(wire.get("timings") or {}))


def task_to_wire(task) -> tuple:
    return (task.name, task.text, task.seed, None if task.ar is None else ar_to_wire(task.ar))


def result_to_wire(result) -> dict:
    """What an actor returns for one task; the driver rebuilds the RenderResult around its own task."""
    samples = None if result.samples is None else result.samples.reshape(-1).float().cpu().numpy()
    return {"name": result.task.name, "samples": samples, "sample_rate": result.sample_rate,
            "ar": ar_to_wire(result.ar) if result.computed_ar else None, "error": result.error,
            "seconds": result.seconds}


# ---------------------------------------------------------------- inside an actor


@dataclass(frozen=True)
class EngineSpec:
    """What an actor needs to load the engine the plan was made for (small and picklable)."""

    models_dir: str  # the driver's folder; a node without it looks where `models download` puts them
    precision: str
    low_vram: bool
    weights_fp: str  # the driver's fingerprint: results of other weights would poison the cache
    settings: object
    batched: bool = False  # BatchedRenderer, as this process would run it (the decoder is in the cache keys)
    batch_chunks: int | None = None  # its chunks at once (None: from the actor's memory)
    device: str = "cpu"  # set from the placement

    def start(self, threads: int) -> "EngineWorker":
        return EngineWorker(self, threads)


class EngineWorker:
    """The loaded engine inside one actor, and the renderer that drives it."""

    def __init__(self, spec: EngineSpec, threads: int):
        import torch

        from tutortoietts.engine import checkpoints
        from tutortoietts.engine.pipeline import Tortoise

        torch.set_num_threads(max(1, threads))  # this actor's share of the node's cores
        host = socket.gethostname()
        try:
            folder = checkpoints.find_models_dir(spec.models_dir)
        except UserError:
            try:
                folder = checkpoints.find_models_dir(None)
            except UserError:
                raise UserError(f"Tortoise weights not found on {host}: not in {spec.models_dir} nor where "
                                f"`tutortoietts models download` puts them; copy them there or run it on that machine") from None
        found = checkpoints.weights_fingerprint(folder)
        if found != spec.weights_fp:
            raise UserError(f"the weights in {folder} on {host} are not the driver's (fingerprint {found}, "
                            f"expected {spec.weights_fp}): give every machine the same files")
        options = {"low_vram": True} if spec.low_vram else {}
        self.tts = Tortoise.load(folder, spec.device, spec.precision, **options)
        self.spec = spec
        self.device = str(self.tts.device)
        self.batch = 1  # chunks per call: with the batched renderer, two rounds of its KV cache's chunks
        if spec.batched:
            group = self.tts.batch_slots(spec.settings, spec.batch_chunks) // spec.settings.num_autoregressive_samples
            self.batch = 2 * max(1, group)

    def voice(self, request: tuple) -> tuple:
        """("random", seed) or ("clips", [22.05 kHz arrays]) -> the voice's two latents as arrays."""
        kind, value = request
        if kind == "random":
            voice = self.tts.random_voice(value)
        else:
            voice = self.tts.voice_latents([as_tensor(clip) for clip in value])
        return voice.autoregressive.numpy(), voice.diffusion.numpy()

    def render(self, tasks: list[tuple], voice: tuple) -> list[dict]:
        from tutortoietts import renderers
        from tutortoietts.engine.pipeline import VoiceLatents

        latents = VoiceLatents(as_tensor(voice[0]), as_tensor(voice[1]))
        spec = self.spec
        if spec.batched:
            renderer = renderers.BatchedRenderer(lambda: self.tts, lambda _: latents, spec.settings,
                                                 batch_chunks=spec.batch_chunks)
        else:
            renderer = renderers.EngineRenderer(lambda: self.tts, lambda _: latents, spec.settings)
        batch = [renderers.RenderTask(name, text, seed, None if ar is None else ar_from_wire(ar))
                 for name, text, seed, ar in tasks]
        return [result_to_wire(result) for result in renderer.render(batch)]


class RenderActor:
    """The Ray actor: one worker (a loaded engine) in its own process, rendering the batches it is sent."""

    def __init__(self, spec, threads: int):
        self.spec, self.threads, self.worker = spec, threads, None

    def start(self) -> dict:
        """Load the engine (once); where this actor runs, for progress and messages."""
        import ray

        if self.worker is None:
            self.worker = self.spec.start(self.threads)
        gpus = [str(gpu) for gpu in ray.get_gpu_ids()]
        return {"pid": os.getpid(), "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
                "device": getattr(self.worker, "device", "?") + (f" (GPU {','.join(gpus)})" if gpus else ""),
                "threads": self.threads, "batch": getattr(self.worker, "batch", 1)}

    def voice(self, request: tuple) -> tuple:
        return self.worker.voice(request)

    def render(self, tasks: list[tuple], voice: tuple) -> list[dict]:
        return self.worker.render(tasks, voice)
