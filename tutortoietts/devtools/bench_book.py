"""`bench --book`: a book's first chunks through the real renderers, serial and batched, and the reference.

The book is planned as `generate` plans it (chunks, seeds); its first `chunks` chunks are then
rendered by EngineRenderer (--batch-chunks 1) and by BatchedRenderer, and on a CPU also by the
reference tortoise-tts 3.0.0 (KV cache on, its ultra_fast: 16 samples, 30 DDPM steps, no
guidance), each side in its own process so its peak memory is its own. Random weights almost
never stop, so every side decodes `codes` steps per candidate (max_mel_tokens forced): the same
work on every side, as for speech of that length.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tutortoietts.engine.limits import SAMPLE_RATE
from tutortoietts.engine.timing import STAGES, StageTimer, peak_memory_bytes
from tutortoietts.errors import UserError

SIDES = ("serial", "batched", "reference")
REFERENCE_SAMPLES = 16  # the reference's ultra_fast
REFERENCE_STEPS = 30


@dataclass
class BookBenchOptions:
    """What one `bench --book` run measures."""

    book: Path
    models_dir: Path
    chunks: int = 8
    codes: int = 100  # forced code length per candidate
    preset: str = "ultra_fast_v2"
    device: str = "cpu"
    batch_chunks: str = "auto"  # the batched side's --batch-chunks
    voice: str = "random"
    seed: int = 0
    reference: bool | None = None  # None: on the CPU only
    warmup: bool = True
    threads: int | None = None  # torch threads per side (None: torch's default)


def planned_chunks(options: BookBenchOptions) -> list[dict]:
    """The book planned as generate plans it; its first `chunks` chunks (name, text, seed)."""
    from tutortoietts.render import RenderRequest, plan_render

    request = RenderRequest(book=options.book, voice=options.voice, preset=options.preset, fmt="wav",
                            models_dir=options.models_dir, device=options.device, seed=options.seed)
    plan = plan_render(request)
    return [dict(name=f"{c.chapter}-{c.index}", text=c.text, seed=c.seed) for c in plan.chunks[: options.chunks]]


def run_book_bench(options: BookBenchOptions, progress=None) -> dict:
    """Plan, run every side in its own process, and return the JSON-ready report."""
    say = progress or (lambda message: None)
    if options.chunks < 1 or options.codes < 2:
        raise UserError("bench --book needs --chunks >= 1 and --codes >= 2")
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch on this machine")
    chunks = planned_chunks(options)
    reference = options.reference if options.reference is not None else device.type == "cpu"
    sides = [side for side in SIDES if side != "reference" or reference]
    report = dict(book=str(options.book), chunks=chunks, options=_jsonable(dataclasses.asdict(options)),
                  machine=machine(device), sides={})
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tutortoietts-bench-book-") as scratch:
        for side in sides:
            say(f"{side}: {len(chunks)} chunks x {options.codes} codes")
            report["sides"][side] = run_side_subprocess(side, options, chunks, Path(scratch) / side)
    report["ratios"] = ratios(report["sides"])
    return report


def machine(device: torch.device) -> dict:
    import platform

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return dict(device=str(device), name=name, cpu_count=os.cpu_count(), torch=torch.__version__, load_average=load)


def ratios(sides: dict) -> dict:
    """The issue's target ratios, from this run."""
    out = {}
    serial, batched, reference = sides.get("serial"), sides.get("batched"), sides.get("reference")
    if serial and batched:
        out["batched_vs_serial_audio_per_second"] = batched["audio_seconds_per_second"] / serial["audio_seconds_per_second"]
        out["batched_vs_serial_ar_per_chunk"] = serial["ar_seconds_per_chunk"] / batched["ar_seconds_per_chunk"]
    if reference and batched:
        out["batched_vs_reference_audio_per_second"] = batched["audio_seconds_per_second"] / reference["audio_seconds_per_second"]
    if reference and serial:
        out["serial_vs_reference_audio_per_second"] = serial["audio_seconds_per_second"] / reference["audio_seconds_per_second"]
    return out


# ---------------------------------------------------------------------------------------------
# One side, in its own process


def run_side_subprocess(side: str, options: BookBenchOptions, chunks: list[dict], out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = dict(side=side, options=_jsonable(dataclasses.asdict(options)), chunks=chunks)
    (out_dir / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the worker imports this very package
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "tutortoietts.devtools.bench_book", str(out_dir / "spec.json"),
                           str(out_dir)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"bench --book side {side!r} failed (exit {done.returncode}):\n{tail}")
    return json.loads((out_dir / "result.json").read_text())


def run_worker(spec_path: Path, out_dir: Path) -> None:
    spec = json.loads(Path(spec_path).read_text())
    options = BookBenchOptions(**{**spec["options"], "book": Path(spec["options"]["book"]),
                                  "models_dir": Path(spec["options"]["models_dir"])})
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.set_grad_enabled(False)
    side = spec["side"]
    load = os.getloadavg()  # the machine may be shared: the load each side ran under is part of its figures
    result = reference_side(options, spec["chunks"]) if side == "reference" else our_side(options, spec["chunks"], side)
    result["threads"] = torch.get_num_threads()
    result["load_average_1min"] = dict(start=load[0], end=os.getloadavg()[0])
    (Path(out_dir) / "result.json").write_text(json.dumps(result, indent=2))


def our_settings(options: BookBenchOptions, device: str):
    from tutortoietts.render import concrete_precision
    from tutortoietts.settings import load_preset

    return concrete_precision(load_preset(options.preset, max_mel_tokens=options.codes), device)


class TimedEngine:
    """The engine with `instruments` passed to its stage sequence: how the serial renderer's
    stages are timed without changing the renderer."""

    def __init__(self, tts, instruments):
        self._tts, self._instruments = tts, instruments

    def __getattr__(self, name):
        return getattr(self._tts, name)

    def autoregressive_stage(self, *args, **kwargs):
        return self._tts.autoregressive_stage(*args, instruments=self._instruments, **kwargs)

    def audio_stage(self, *args, **kwargs):
        return self._tts.audio_stage(*args, instruments=self._instruments, **kwargs)


def our_side(options: BookBenchOptions, chunks: list[dict], side: str) -> dict:
    """Render the chunks through EngineRenderer ("serial") or BatchedRenderer ("batched")."""
    from tutortoietts.devtools.bench import ar_weight_bytes
    from tutortoietts.engine.pipeline import Tortoise
    from tutortoietts.render import RenderRequest, batch_chunks
    from tutortoietts.renderers import BatchedRenderer, EngineRenderer, RenderTask

    device = torch.device(options.device)
    settings = our_settings(options, options.device)
    start = time.perf_counter()
    tts = Tortoise.load(options.models_dir, device, settings.precision)
    voice = tts.random_voice(options.seed)
    load_seconds = time.perf_counter() - start
    count = batch_chunks(RenderRequest(book=options.book, voice=options.voice, batch_chunks=options.batch_chunks))

    def renderer(timer: StageTimer, settings_):
        if side == "batched":
            return BatchedRenderer(lambda: tts, lambda _: voice, settings_, batch_chunks=count, instruments=timer)
        return EngineRenderer(lambda: TimedEngine(tts, timer), lambda _: voice, settings_)

    tasks = [RenderTask(chunk["name"], chunk["text"], chunk["seed"]) for chunk in chunks]
    warmup_seconds = None
    if options.warmup:  # short, untimed: first-call allocations (and CUDA graph capture) stay out of the timing
        start = time.perf_counter()
        list(renderer(StageTimer(device), settings.replace(max_mel_tokens=min(8, options.codes), diffusion_iterations=2))
             .render(tasks[:2]))
        warmup_seconds = time.perf_counter() - start

    timer = StageTimer(device)
    chosen = renderer(timer, settings)
    start = time.perf_counter()
    results = list(chosen.render(tasks))
    wall = time.perf_counter() - start
    failed = [f"{r.task.name}: {r.error}" for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"chunks failed: {failed[:3]}")
    audio = sum(r.samples.numel() for r in results) / SAMPLE_RATE
    stages = dict(timer.seconds)
    if side == "batched":
        stats = tts.decode_stats
        stages["autoregressive"] = stats.seconds + stats.prefill_seconds
        steps, rows, slots = stats.steps, stats.row_steps / max(stats.steps, 1), stats.slots
        warmup_seconds = (warmup_seconds or 0.0) + stats.warmup_seconds
    else:
        steps, rows, slots = timer.decode_steps, settings.batch_size(), settings.batch_size()
    ar_seconds = stages.get("autoregressive", 0.0)
    weights = ar_weight_bytes(tts.autoregressive)
    return dict(
        side=side, settings=settings.to_dict(), chunks=len(results), slots=slots,
        audio_seconds=audio, wall_seconds=wall, audio_seconds_per_second=audio / wall,
        stage_seconds={name: stages.get(name, 0.0) for name in STAGES},
        ar_seconds_per_chunk=ar_seconds / len(results), ar_steps=steps,
        ar_steps_per_second=steps / ar_seconds if ar_seconds else None, rows_per_step=rows,
        codes_per_second=steps * rows / ar_seconds if ar_seconds else None,
        ar_weight_bytes=weights, achieved_weight_bandwidth_gb_s=weights * steps / ar_seconds / 1e9 if ar_seconds else None,
        peak_memory_gb=peak_memory_bytes(device) / 1e9, load_seconds=load_seconds, warmup_seconds=warmup_seconds,
        memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "peak RSS",
    )


def reference_side(options: BookBenchOptions, chunks: list[dict]) -> dict:
    """The reference's ultra_fast (KV cache on) on the same chunk texts, chunk after chunk."""
    from tutortoietts.devtools.bench import ar_weight_bytes, models_config
    from tutortoietts.devtools.reference_runner import load_reference, run_reference
    from tutortoietts.engine.tokenizer import Tokenizer

    device = torch.device(options.device)
    config = models_config(options.models_dir)
    start = time.perf_counter()
    models = load_reference(options.models_dir, config, options.device, kv_cache=True)
    load_seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(options.seed)  # a voice: any latents of the right shape
    auto_latent = torch.randn(1, config["autoregressive"]["model_dim"], generator=generator)
    diffusion_latent = torch.randn(1, 2 * config["diffusion_decoder"]["model_channels"], generator=generator)
    tokenizer = Tokenizer()

    def synthesize(chunk: dict, timer: StageTimer, codes: int, steps: int) -> dict:
        text_ids = torch.tensor([tokenizer.encode(chunk["text"])], dtype=torch.long)
        return run_reference(models, text_ids, auto_latent, diffusion_latent, num_samples=REFERENCE_SAMPLES,
                             code_length=codes, diffusion_steps=steps, cond_free=False, seed=chunk["seed"] % 2**32,
                             timer=timer)

    warmup_seconds = None
    if options.warmup:
        start = time.perf_counter()
        synthesize(chunks[0], StageTimer(device), min(8, options.codes), 2)
        warmup_seconds = time.perf_counter() - start
    timer = StageTimer(device)
    audio, steps = 0.0, 0
    start = time.perf_counter()
    for chunk in chunks:
        out = synthesize(chunk, timer, options.codes, REFERENCE_STEPS)
        audio += out["wav"].shape[-1] / SAMPLE_RATE
        steps += out["ar_steps"]
    wall = time.perf_counter() - start
    ar_seconds = timer.seconds.get("autoregressive", 0.0)
    weights = ar_weight_bytes(models.autoregressive)
    return dict(
        side="reference", settings=dict(preset="ultra_fast (reference)", num_samples=REFERENCE_SAMPLES,
                                        diffusion_steps=REFERENCE_STEPS, sampler="ddpm", precision="fp32", kv_cache=True),
        chunks=len(chunks), slots=REFERENCE_SAMPLES, audio_seconds=audio, wall_seconds=wall,
        audio_seconds_per_second=audio / wall, stage_seconds={name: timer.seconds.get(name, 0.0) for name in STAGES},
        ar_seconds_per_chunk=ar_seconds / len(chunks), ar_steps=steps,
        ar_steps_per_second=steps / ar_seconds if ar_seconds else None, rows_per_step=REFERENCE_SAMPLES,
        codes_per_second=steps * REFERENCE_SAMPLES / ar_seconds if ar_seconds else None,
        ar_weight_bytes=weights, achieved_weight_bandwidth_gb_s=weights * steps / ar_seconds / 1e9 if ar_seconds else None,
        peak_memory_gb=peak_memory_bytes(device) / 1e9, load_seconds=load_seconds, warmup_seconds=warmup_seconds,
        memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "peak RSS",
    )


def book_tables(report: dict) -> list:
    """Rich tables of a report: speed per side, the decode and memory figures, and the target ratios."""
    from rich.table import Table

    def num(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    speed = Table(title=f"{len(report['chunks'])} chunks of {report['book']}: audio seconds per wall second, stage seconds")
    for column in ("side", "audio s", "wall s", "audio s / s", *STAGES, "AR s / chunk"):
        speed.add_column(column, justify="left" if column == "side" else "right")
    for name, side in report["sides"].items():
        speed.add_row(name, num(side["audio_seconds"], 1), num(side["wall_seconds"], 1), num(side["audio_seconds_per_second"], 3),
                      *(num(side["stage_seconds"].get(stage), 1) for stage in STAGES), num(side["ar_seconds_per_chunk"], 2))
    decode = Table(title="decoding and memory")
    for column in ("side", "AR steps/s", "rows/step", "codes/s", "weights GB/s", "slots", "peak GB", "load s", "warm-up s"):
        decode.add_column(column, justify="left" if column == "side" else "right")
    for name, side in report["sides"].items():
        decode.add_row(name, num(side["ar_steps_per_second"]), num(side["rows_per_step"], 1), num(side["codes_per_second"], 1),
                       num(side["achieved_weight_bandwidth_gb_s"], 1), str(side["slots"]), num(side["peak_memory_gb"]),
                       num(side["load_seconds"], 1), num(side["warmup_seconds"], 1))
    ratio = Table(title="ratios (higher is better for the first side named)")
    ratio.add_column("ratio")
    ratio.add_column("value", justify="right")
    for name, value in report["ratios"].items():
        ratio.add_row(name.replace("_", " "), f"{value:.2f}x")
    return [speed, decode, ratio]


def _jsonable(values: dict) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]), Path(sys.argv[2]))
