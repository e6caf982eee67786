"""Stage timing and peak memory: what the engine reports per stage, and what bench and profile read."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The engine's stages, in the order a synthesis runs them (Tortoise.autoregressive_stage, then Tortoise.audio_stage).
STAGES = ("autoregressive", "rerank", "latents", "diffusion", "vocoder")
# With settings.decoder "hifi": the HiFi decoder (its own latents pass included) instead of diffusion and vocoder.
HIFI_STAGES = ("autoregressive", "rerank", "latents", "hifi")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers the work and not just its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Instruments:
    """What a caller (bench, profile, a renderer) may observe inside the engine, passed in as an
    argument: the engine calls these at fixed points and never gets patched. This base does nothing."""

    def stage(self, name: str):
        """Context around one whole stage (see STAGES)."""
        return contextlib.nullcontext()

    def range(self, name: str):
        """Context around a named part of a stage (e.g. "ar:sampling", the logit processing of one step)."""
        return contextlib.nullcontext()

    def decode_step(self, step: int) -> None:
        """Called once per sampled code position of the autoregressive loop (step 0: the prefill's)."""


NO_INSTRUMENTS = Instruments()


@dataclass
class StageTimer(Instruments):
    """Wall-clock seconds per named stage, summed over repeats, and the decode steps run; each stage
    is also a profiler range."""

    device: torch.device | str = "cpu"
    seconds: dict[str, float] = field(default_factory=dict)
    current: str | None = None  # the stage running now, so sub-ranges know whose they are
    decode_steps: int = 0

    @contextlib.contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        self.current = name
        try:
            # record_function is near free when no profiler is running, and names the range in a trace.
            with torch.profiler.record_function(f"stage:{name}"):
                yield
            synchronize(self.device)
        finally:
            self.current = None
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def decode_step(self, step: int) -> None:
        self.decode_steps += 1

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux from /proc (VmHWM): getrusage's ru_maxrss survives exec, so a freshly started bench
    worker would report its parent's peak if the parent was bigger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory of the side that matters: GPU allocations on CUDA, process RSS on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()
