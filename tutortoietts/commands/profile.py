"""`tutortoietts profile`: where one synthesis spends its time, by stage and by operator, plus a Chrome trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tutortoietts.commands.options import Device, ModelsDir, Precision, Preset, Seed


def breakdown_table(report: dict) -> Table:
    table = Table(title=f"stages ({report['preset']}, {report['device']}, total {report['total_seconds']:.2f} s, RTF {report['real_time_factor']:.2f})")
    table.add_column("part")
    table.add_column("seconds", justify="right")
    table.add_column("%", justify="right")
    for row in report["breakdown"]:
        table.add_row(row["part"], f"{row['seconds']:.3f}", f"{row['percent']:.1f}")
    return table


def operators_table(report: dict) -> Table:
    table = Table(title="top operators by self time")
    for column in ("operator", "calls", "self s", "%"):
        table.add_column(column, justify="left" if column == "operator" else "right")
    for row in report["top_operators"]:
        table.add_row(row["name"], str(row["calls"]), f"{row['self_seconds']:.3f}", f"{row['percent']:.1f}")
    return table


def profile(
    preset: Preset = "ultra_fast_v2",
    text: Annotated[Optional[str], typer.Option("--text", help="Text to speak (default: one sentence).")] = None,
    models_dir: ModelsDir = None,
    device: Device = "cpu",
    precision: Precision = None,
    trace: Annotated[Path, typer.Option("--trace", help="Chrome trace to write (open in chrome://tracing or Perfetto).")] = Path("profile-trace.json"),
    codes: Annotated[Optional[int], typer.Option("--codes", help="Cap on codes sampled (random weights never stop early).")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Autoregressive samples (default: the preset's).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
    seed: Seed = 0,
) -> None:
    """Synthesise once under torch.profiler: stage breakdown in %, top operators, peak memory, RTF, trace."""
    from tutortoietts.devtools.profiling import ProfileOptions, run_profile

    options = ProfileOptions(preset=preset, models_dir=models_dir, device=device, trace_path=trace, seed=seed,
                             precision=precision, codes=codes, samples=samples)
    if text is not None:
        options.text = text
    console = Console()
    with console.status("profiling one synthesis"):
        report = run_profile(options)
    console.print(breakdown_table(report))
    console.print(operators_table(report))
    console.print(f"peak memory ({report['memory_kind']}): {report['peak_memory_bytes'] / 1e9:.2f} GB; "
                  f"audio {report['audio_seconds']:.2f} s; {report['note']}")
    console.print(f"trace written to {report['trace_path']}")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
