"""`profile`: stage timers, torch.profiler hotspots and a Chrome trace; also the timing/memory helpers bench uses."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers the work and not just its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StageTimer:
    """Wall-clock seconds per named stage, summed over repeats; each stage is also a profiler range."""

    device: torch.device | str = "cpu"
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        # record_function is near free when no profiler is running, and names the range in a trace.
        with torch.profiler.record_function(f"stage:{name}"):
            yield
        synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory of the side that matters: GPU allocations on CUDA, process RSS on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def measure_bandwidth(device: torch.device | str, megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s from the best of a few large tensor copies (each reads and writes once)."""
    device = torch.device(device)
    numel = megabytes * 2**20 // 4
    source = torch.ones(numel, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch: page faults and allocator warm-up stay out of the timing
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    del source, target
    return 2 * numel * 4 / best
