"""`tutortoietts bench`: our engine against the reference tortoise-tts, per stage, with fidelity; Rich table + JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tutortoietts.commands.options import BatchChunks, Device, ModelsDir
from tutortoietts.errors import UserError

STAGE_COLUMNS = ("autoregressive", "rerank", "latents", "diffusion", "vocoder", "hifi")  # hifi: decoder "hifi" sides


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def _num(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def speed_table(report: dict) -> Table:
    """Seconds per stage with the speedup against the reference (KV cache on) under each."""
    table = Table(title="seconds per stage (speedup vs reference kv-cache)", show_lines=True)
    for column in ("side", "samples x codes, steps", *STAGE_COLUMNS, "total", "RTF"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for name, side in report["sides"].items():
        settings = side["settings"]
        samples = settings.get("num_samples", settings.get("num_autoregressive_samples"))
        # Ours: Settings' diffusion_iterations (its diffusion_steps is "fixed"/"auto"); the reference side: a count.
        steps = settings.get("diffusion_iterations", settings.get("diffusion_steps"))
        sampler = settings.get("sampler", "ddpm")
        shape = f"{samples} x {side['ar_steps']}, " + ("hifi decoder" if settings.get("decoder") == "hifi" else f"{steps} {sampler}")
        cells = []
        for stage in (*STAGE_COLUMNS, "end_to_end"):
            seconds = side["total_seconds"] if stage == "end_to_end" else side["stage_seconds"].get(stage)
            speedup = side.get("speedup", {}).get(stage)
            cells.append("-" if seconds is None else f"{seconds:.2f}" + (f"\n{speedup:.2f}x" if speedup else ""))
        table.add_row(name, shape, *cells, _num(side["real_time_factor"]))
    return table


def hardware_table(report: dict) -> Table:
    """Decode speed against the memory-bandwidth limit, and peak memory."""
    bandwidth = report["machine"]["memory_bandwidth_bytes_per_second"]
    table = Table(title=f"decode and memory (measured copy bandwidth {_gb(bandwidth)} GB/s)")
    for column in ("side", "AR steps/s", "AR weights GB", "achieved GB/s", "% of bandwidth", "peak memory GB", "vs reference", "load s", "warm-up s"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for name, side in report["sides"].items():
        achieved = side["achieved_bandwidth_bytes_per_second"]
        ratio = side.get("peak_memory_vs_reference")
        table.add_row(
            name, _num(side["ar_steps_per_second"]), _gb(side["ar_weight_bytes"]), _gb(achieved),
            _num(100 * achieved / bandwidth, 0, "%"), _gb(side["peak_memory_bytes"]),
            "-" if ratio is None else f"{100 * ratio:.0f}%", _num(side["load_seconds"], 1), _num(side["warmup_seconds"], 1),
        )
    return table


def fidelity_table(report: dict) -> Table:
    table = Table(title="fidelity on fixed inputs (max |diff| unless named)")
    columns = ("latents_max_diff", "logits_max_diff", "code_agreement", "clvp_scores_max_diff", "mel_rms_diff",
               "vocoder_wave_max_diff", "vocoder_wave_rms_diff")
    table.add_column("comparison")
    for column in columns:
        table.add_column(column.replace("_max_diff", "").replace("_", " "), justify="right")
    for name, entry in report["fidelity"].items():
        table.add_row(name, *("-" if entry.get(c) is None else f"{entry[c]:.3g}" for c in columns))
    return table


def targets_table(report: dict) -> Table:
    table = Table(title="targets")
    for column in ("target", "measured", "met"):
        table.add_column(column)
    for name, entry in report["targets"].items():
        table.add_row(name, f"{entry['value']:.2f}", "yes" if entry["met"] else "NO")
    return table


def sampler_table(result: dict) -> Table:
    table = Table(title=f"sampler distance to {result['reference']} from the same noise (RMS log-mel, {result['precision']})")
    table.add_column("sampler")
    table.add_column("distance", justify="right")
    for name, distance in result["rms_log_mel_distance"].items():
        table.add_row(name, f"{distance:.3f}")
    return table


def run_studies(options, drop_layers, ablate: bool, speculative: bool, draft_layers, draft_models, say) -> dict:
    """The research studies (devtools/research.py, devtools/ablation.py) on the bench's models, text and sizes."""
    from tutortoietts.devtools import research

    if not (drop_layers or ablate or speculative):
        return {}
    inputs = research.StudyInputs(models_dir=options.models_dir, device=options.device, text=options.text,
                                  num_samples=options.num_samples, code_length=options.code_length,
                                  diffusion_steps=options.diffusion_steps, quality=options.quality, repeats=options.repeats)
    studies = {}
    if drop_layers or ablate:
        from tutortoietts.devtools.ablation import ablation_study

        studies["ablation"] = ablation_study(inputs, list(drop_layers or []), sweep=ablate, progress=say)
    if speculative:
        studies["speculation"] = research.speculation_study(inputs, draft_layers=draft_layers, draft_models=draft_models,
                                                            progress=say)
    return studies


def print_report(console: Console, report: dict) -> None:
    """Every table the report has, the weights it ran on first; quality columns on random weights warned."""
    from tutortoietts.devtools import research

    origin = report.get("weights") or next((study["weights"] for study in (report.get("ablation"), report.get("speculation")) if study), None)
    if origin:
        console.print(research.weights_line(origin))
    if "sides" in report:
        for table in (speed_table(report), research.latency_table(report), hardware_table(report), fidelity_table(report), targets_table(report)):
            console.print(table)
    if "samplers" in report:
        console.print(sampler_table(report["samplers"]))
    if "quality" in report:
        console.print(research.side_quality_table(report))
    if "ablation" in report:
        console.print(research.ablation_table(report["ablation"]))
    if "speculation" in report:
        console.print(research.speculation_table(report["speculation"]))
    quality_shown = "quality" in report or any(entry.get("quality") for entry in report.get("ablation", {}).get("variants", []))
    if quality_shown and origin and origin["kind"] != "official":
        console.print(f"[bold]warning:[/bold] {research.QUALITY_WARNING}")


def bench_book(book: Path, models_dir: Path, device: str, chunks: int, codes: int, batch_chunks: str, json_path) -> None:
    """`bench --book`: the book's first chunks serial, batched and (CPU) with the reference; see devtools/bench_book.py."""
    from tutortoietts.devtools.bench_book import BookBenchOptions, book_tables, run_book_bench

    if not book.is_file():
        raise UserError(f"--book {book}: no such file")
    options = BookBenchOptions(book=book, models_dir=models_dir, chunks=chunks, codes=codes, device=device,
                               batch_chunks=batch_chunks)
    console = Console(width=max(Console().width, 150))
    with console.status("benchmarking the book") as status:
        report = run_book_bench(options, progress=status.update)
    for table in book_tables(report):
        console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"report written to {json_path}")


def bench(
    models_dir: ModelsDir = None,
    device: Device = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="A small run: 2 samples x 16 codes, 4 diffusion steps, no warm-up.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the full report here as JSON.")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Autoregressive samples (default 16, the reference's ultra_fast).")] = None,
    codes: Annotated[Optional[int], typer.Option("--codes", help="Codes every side decodes, forced (default 100).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="DDPM steps of the reference-settings sides (default 30).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Alternating runs per side; the best is reported.")] = 1,
    text: Annotated[Optional[str], typer.Option("--text", help="Text to speak (default: one sentence).")] = None,
    side: Annotated[Optional[list[str]], typer.Option("--side", help="Run only this side (repeatable), e.g. 'ours bf16'.")] = None,
    no_cache_reference: Annotated[bool, typer.Option("--reference-no-cache/--skip-reference-no-cache", help="Also time the reference's default path without a KV cache (autoregressive stage only; slow).")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile our decode step (CUDA graphs on CUDA); compile time shows as warm-up.")] = False,
    warmup: Annotated[Optional[bool], typer.Option("--warmup/--no-warmup", help="A short untimed run per side first (default on, off with --quick).")] = None,
    samplers: Annotated[bool, typer.Option("--samplers", help="Also measure how close DPM-Solver++ / DDIM / the reference's DDPM land to a 200-step DDIM (same noise).")] = False,
    quality: Annotated[bool, typer.Option("--quality", help="Our sides also speak the directive's four test texts; MCD, PESQ, STOI, log-mel against ours fp32.")] = False,
    drop_layers: Annotated[Optional[list[str]], typer.Option("--drop-layers", help="Layer ablation: skip these autoregressive blocks, e.g. 20-29, every-3rd, 0,5,7 (repeatable); KL, top-1 agreement, speed (and quality with --quality) against the full model.")] = None,
    ablate: Annotated[bool, typer.Option("--ablate", help="Layer ablation over a sweep of block sets (the last third, every 3rd, ...).")] = False,
    speculative: Annotated[bool, typer.Option("--speculative", help="Speculative sampling at k = 2, 4, 8: acceptance rate and speed against plain sampling.")] = False,
    draft_layers: Annotated[Optional[int], typer.Option("--draft-layers", help="--speculative draft: the model's own first N blocks (default: half).")] = None,
    draft_models: Annotated[Optional[Path], typer.Option("--draft-models", help="--speculative draft: a folder with a smaller autoregressive.pth (and its tortoise-config.json).")] = None,
    studies_only: Annotated[bool, typer.Option("--studies-only", help="Run only --drop-layers/--ablate/--speculative, not the side-by-side timing.")] = False,
    book: Annotated[Optional[Path], typer.Option("--book", help="Plan this manuscript like generate and render its first --chunks chunks serial, batched and (on a CPU) with the reference.")] = None,
    chunks: Annotated[int, typer.Option("--chunks", min=1, help="With --book: how many of its chunks.")] = 8,
    batch_chunks: BatchChunks = "auto",
) -> None:
    """Time the reference tortoise-tts and our engine on the same random full-size weights, stage by stage."""
    from tutortoietts.devtools import bench as bench_lib

    directory = models_dir if models_dir is not None else bench_lib.default_models_dir()
    if not Path(directory).is_dir():
        raise UserError(f"models folder {directory} does not exist")
    if book is not None:
        return bench_book(book, Path(directory), device, chunks, codes or 100, batch_chunks, json_path)
    changes = dict(device=device, text=text, num_samples=samples, code_length=codes, diffusion_steps=steps,
                   repeats=repeats, reference_no_kv=no_cache_reference, compile=compile, warmup=warmup,
                   sides=tuple(side) if side else None, quality=quality)
    if quick:
        options = bench_lib.BenchOptions.quick_run(Path(directory), **changes)
    else:
        options = bench_lib.BenchOptions(models_dir=Path(directory), **{k: v for k, v in changes.items() if v is not None})

    if studies_only and not (drop_layers or ablate or speculative):
        raise UserError("--studies-only needs a study: --drop-layers, --ablate or --speculative")
    # Wide enough for the tables even when the output is a pipe or a file.
    console = Console(width=max(Console().width, 150))
    with console.status("benchmarking") as status:
        say = lambda message: status.update(message)  # noqa: E731
        report = {} if studies_only else bench_lib.run_bench(options, progress=say)
        if samplers:
            status.update("comparing samplers against a many-step DDIM")
            report["samplers"] = bench_lib.sampler_comparison(options, reference_steps=20 if quick else 200)
        report.update(run_studies(options, drop_layers, ablate, speculative, draft_layers, draft_models, say))
    print_report(console, report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"report written to {json_path}")
