"""`voices`, `jobs`, `cache stats|clear`, `presets`: what the tool has on hand, shown as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tutortoietts.errors import UserError

console = Console()
cache_app = typer.Typer(help="The disk cache of voice latents, autoregressive codes and chunk audio.", no_args_is_help=True)


def voices() -> None:
    """List every voice --voice accepts by name, and where it comes from."""
    from tutortoietts.voices import list_voices, project_voices_dir, tortoise_voices_dir, user_voices_dir

    table = Table(title="voices (also: 'random', or a folder of clips)")
    for column in ("name", "source", "clips"):
        table.add_column(column)
    for voice in list_voices():
        table.add_row(voice.name, voice.source, str(len(voice.clips)))
    console.print(table)
    console.print(f"searched: project {project_voices_dir() or '-'}, user {user_voices_dir()}, tortoise {tortoise_voices_dir() or '-'}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def jobs(
    directory: Annotated[Optional[Path], typer.Argument(help="A job folder, or a folder holding job folders (default: here).")] = None,
) -> None:
    """Show jobs and their progress: chunks done / failed / pending, audio so far, running or not."""
    from tutortoietts.jobs import find_jobs, read_job_summary

    root = directory or Path.cwd()
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    found = [summary for summary in map(read_job_summary, find_jobs(root)) if summary is not None]
    if not found:
        console.print(f"no jobs in {root}")
        return
    table = Table(title=f"jobs in {root}")
    for column in ("job", "book", "voice", "preset", "done", "failed", "pending", "audio", "state"):
        table.add_column(column)
    for job in found:
        if "damaged" in job:
            table.add_row(Path(job["directory"]).name, "?", "?", "?", "?", "?", "?", "?",
                          f"damaged database ({job['damaged']}): `generate` rebuilds it from the chunk files")
            continue
        counts = job["counts"]
        state = "running" if job["running"] else ("finished" if job["finished"] and counts["done"] == job["total"] else "stopped")
        table.add_row(
            Path(job["directory"]).name, Path(job["book_path"]).name, job["voice"], job["preset"],
            f"{counts['done']}/{job['total']}", str(counts["failed"]), str(counts["pending"]),
            _duration(job["audio_seconds"]), state,
        )
    console.print(table)


@cache_app.command("stats")
def cache_stats() -> None:
    """Entries, hit rates and size per namespace (voice latents, AR codes, chunk audio)."""
    from tutortoietts.cache import Cache

    with Cache() as cache:
        stats = cache.stats()
    table = Table(title=f"cache {stats['directory']}: {stats['bytes'] / 2**20:,.1f} MiB of {stats['size_limit'] / 2**30:,.1f} GiB")
    for column in ("namespace", "entries", "hits", "misses", "hit rate", "damaged (dropped)"):
        table.add_column(column, justify="right")
    for name, row in stats["namespaces"].items():
        rate = "-" if row["hit_rate"] is None else f"{100 * row['hit_rate']:.0f}%"
        table.add_row(name, str(row["entries"]), str(row["hits"]), str(row["misses"]), rate, str(row["damaged"]))
    console.print(table)


@cache_app.command("clear")
def cache_clear(
    weights: Annotated[Optional[str], typer.Option("--weights", help="Only entries made with this weights fingerprint (`models where` shows it).")] = None,
) -> None:
    """Empty the cache (job folders keep their audio: the cache may forget, jobs do not)."""
    from tutortoietts.cache import Cache

    with Cache() as cache:
        removed = cache.clear(weights_fp=weights)
    console.print(f"removed {removed} cache entries")


def presets(
    name: Annotated[Optional[str], typer.Argument(help="A preset to show with every resolved value.")] = None,
) -> None:
    """List the presets, or show one preset's resolved values."""
    from tutortoietts.settings import load_preset, preset_names

    if name is not None:
        settings = load_preset(name)
        table = Table(title=f"preset {name}")
        table.add_column("setting")
        table.add_column("value", justify="right")
        for field, value in settings.to_dict().items():
            table.add_row(field, str(value))
        console.print(table)
        return
    table = Table(title="presets (`tutortoietts presets NAME` shows every value)")
    # Short headers so the table fits a terminal; `presets NAME` has the full names.
    shown = {"num_autoregressive_samples": "AR samples", "diffusion_iterations": "diffusion steps",
             "sampler": "sampler", "cond_free": "guidance", "precision": "precision"}
    table.add_column("preset")
    for header in shown.values():
        table.add_column(header, justify="right")
    for preset in preset_names():
        settings = load_preset(preset).to_dict()
        table.add_row(preset, *(str(settings.get(field)) for field in shown))
    console.print(table)
