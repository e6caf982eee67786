"""`profile`: stage timers, torch.profiler hotspots and a Chrome trace; also the timing/memory helpers bench uses."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tutortoietts.engine.timing import StageTimer, peak_memory_bytes, synchronize
from tutortoietts.errors import UserError


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


# ---------------------------------------------------------------------------------------------
# The stages, as generation runs them (bench and profile share this)

# ---------------------------------------------------------------------------------------------
# Sub-stage ranges: module hooks that time (and name, for the trace) parts of a stage


class RangeTimer:
    """Accumulated time of named code ranges entered from module hooks, per stage; CUDA events on a GPU.

    Keys are "stage/range": the AR blocks run in both the autoregressive and the latents stage.
    """

    def __init__(self, device: torch.device | str, stages: StageTimer):
        self.cuda = torch.device(device).type == "cuda"
        self.stages = stages
        self.cpu_seconds: dict[str, float] = {}
        self.events: dict[str, list] = {}
        self._open: list = []
        self._handles: list = []

    def enter(self, name: str) -> None:
        name = f"{self.stages.current}/{name}"
        scope = torch.profiler.record_function(name)
        scope.__enter__()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start = time.perf_counter()
        self._open.append((name, scope, start))

    def exit(self) -> None:
        name, scope, start = self._open.pop()
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.setdefault(name, []).append((start, end))
        else:
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.perf_counter() - start
        scope.__exit__(None, None, None)

    def hook(self, module: torch.nn.Module, name: str) -> None:
        """Time every forward of `module` under `name`."""
        self._handles.append(module.register_forward_pre_hook(lambda *_: self.enter(name)))
        self._handles.append(module.register_forward_hook(lambda *_: self.exit()))

    def wrap(self, function, name: str):
        """A function that runs `function` inside the named range."""

        def timed(*args, **kwargs):
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.exit()

        return timed

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def seconds(self) -> dict[str, float]:
        if not self.cuda:
            return dict(self.cpu_seconds)
        torch.cuda.synchronize()
        return {name: sum(s.elapsed_time(e) for s, e in pairs) / 1000 for name, pairs in self.events.items()}


def find_network(tts, names: tuple[str, ...], kind: str) -> torch.nn.Module:
    for name in names:
        module = getattr(tts, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise RuntimeError(f"cannot find the {kind} network on the Tortoise facade (looked for {', '.join(names)})")


def autoregressive_network(tts) -> torch.nn.Module:
    return find_network(tts, ("autoregressive", "gpt", "ar"), "autoregressive")


def diffusion_network(tts) -> torch.nn.Module:
    return find_network(tts, ("diffusion", "diffusion_decoder", "decoder"), "diffusion")


def hook_substages(tts, ranges: RangeTimer) -> None:
    """Time attention and feed-forward of every AR block and the diffusion network (module hooks).

    The code sampling is timed by the engine itself, through ProfileTimer.range("ar:sampling").
    """
    for name, module in autoregressive_network(tts).named_modules():
        # gpt.h.<i>.attn / gpt.h.<i>.mlp: the checkpoint's names for the two halves of each block.
        parts = name.split(".")
        if len(parts) == 4 and parts[:2] == ["gpt", "h"] and parts[3] in ("attn", "mlp"):
            ranges.hook(module, "ar:attention" if parts[3] == "attn" else "ar:feed_forward")
    ranges.hook(diffusion_network(tts), "diffusion:network")


@dataclass
class ProfileTimer(StageTimer):
    """The engine's instruments for `profile`: stage times plus the named ranges it reports."""

    ranges: RangeTimer | None = None

    @contextlib.contextmanager
    def range(self, name: str):
        self.ranges.enter(name)
        try:
            yield
        finally:
            self.ranges.exit()


def stage_breakdown(stage_seconds: dict[str, float], ranges: dict[str, float]) -> list[tuple[str, float]]:
    """Rows (part, seconds) that add up to the total: each stage, split where sub-ranges were timed."""
    rows = []
    ar = stage_seconds.get("autoregressive", 0.0)
    attention, feed_forward, sampling = (
        ranges.get(f"autoregressive/{k}", 0.0) for k in ("ar:attention", "ar:feed_forward", "ar:sampling")
    )
    rows += [
        ("autoregressive: attention", attention),
        ("autoregressive: feed-forward", feed_forward),
        ("autoregressive: sampling (logit processing)", sampling),
        ("autoregressive: other (embeddings, norms, head, prefill glue)", max(ar - attention - feed_forward - sampling, 0.0)),
    ]
    for stage in ("rerank", "latents"):
        rows.append((stage, stage_seconds.get(stage, 0.0)))
    if "hifi" in stage_seconds:  # decoder "hifi": its latents pass and the HiFi decoder, no diffusion or vocoder
        hifi = stage_seconds["hifi"]
        latents = min(ranges.get("hifi/hifi:latents", 0.0), hifi)
        return rows + [("hifi: latents (autoregressive pass)", latents), ("hifi: decoder", max(hifi - latents, 0.0))]
    diffusion = stage_seconds.get("diffusion", 0.0)
    network = min(ranges.get("diffusion/diffusion:network", 0.0), diffusion)
    rows += [("diffusion: network", network), ("diffusion: solver and setup", max(diffusion - network, 0.0))]
    rows.append(("vocoder", stage_seconds.get("vocoder", 0.0)))
    return rows


# ---------------------------------------------------------------------------------------------
# `profile`


@dataclass
class ProfileOptions:
    """What one `profile` run synthesises, where, and where the trace goes."""

    preset: str = "ultra_fast_v2"
    text: str = "The old lighthouse keeper climbed the stairs each evening and lit the lamp."
    models_dir: Path | None = None
    device: str = "cpu"
    trace_path: Path = Path("profile-trace.json")
    seed: int = 0  # the synthesis seed (a chunk's seed in generate)
    voice_seed: int | None = None  # the random voice's seed; None: `seed` (generate --voice random uses the job seed)
    precision: str | None = None  # None: the preset's
    codes: int | None = None  # cap on codes (random weights never stop early); None: the preset's
    samples: int | None = None  # None: the preset's
    top_ops: int = 15


def _self_time_us(event, cuda: bool) -> float:
    if cuda:
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def top_operators(profiler, cuda: bool, limit: int) -> list[dict]:
    """Operators by self time (device time on CUDA), our own named ranges left out."""
    rows = []
    for event in profiler.key_averages():
        if event.key.startswith(("stage:", "ProfilerStep")) or "/" in event.key:
            continue
        rows.append(dict(name=event.key, calls=int(event.count), self_seconds=_self_time_us(event, cuda) / 1e6))
    rows.sort(key=lambda row: row["self_seconds"], reverse=True)
    total = sum(row["self_seconds"] for row in rows) or 1.0
    for row in rows:
        row["percent"] = 100 * row["self_seconds"] / total
    return rows[:limit]


def run_profile(options: ProfileOptions) -> dict:
    """Synthesise once under torch.profiler with sub-stage hooks; write the trace; return the breakdown."""
    return profile_once(options)[0]


def profile_once(options: ProfileOptions):
    """(the report, the Clip synthesised): the engine's own stage sequence, as generate runs it."""
    from tutortoietts.engine.checkpoints import find_models_dir
    from tutortoietts.engine.pipeline import Tortoise
    from tutortoietts.settings import load_preset

    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch on this machine")
    settings = load_preset(options.preset, precision=options.precision, max_mel_tokens=options.codes,
                           num_autoregressive_samples=options.samples)
    models_dir = find_models_dir(options.models_dir)
    tts = Tortoise.load(models_dir, device=str(device), precision=settings.precision)
    voice = tts.random_voice(options.seed if options.voice_seed is None else options.voice_seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timer = ProfileTimer(device)
    ranges = timer.ranges = RangeTimer(device, timer)
    hook_substages(tts, ranges)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities) as profiler:
            clip = tts.synthesize(options.text, voice, settings, options.seed, instruments=timer)
    finally:
        ranges.remove()
    trace_path = Path(options.trace_path)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(trace_path))

    total = timer.total
    audio_seconds = clip.seconds
    breakdown = [dict(part=part, seconds=seconds, percent=100 * seconds / total) for part, seconds in stage_breakdown(timer.seconds, ranges.seconds())]
    return dict(
        preset=options.preset,
        settings=settings.to_dict(),
        device=str(device),
        models_dir=str(models_dir),
        stage_seconds=dict(timer.seconds),
        total_seconds=total,
        breakdown=breakdown,
        top_operators=top_operators(profiler, device.type == "cuda", options.top_ops),
        peak_memory_bytes=peak_memory_bytes(device),
        memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "peak RSS",
        audio_seconds=audio_seconds,
        real_time_factor=total / audio_seconds,
        trace_path=str(trace_path),
        note="times measured under torch.profiler (adds some overhead)",
    ), clip
