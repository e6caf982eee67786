"""`tutortoietts models`: download the official weights, write random ones, show which are used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tutortoietts.commands.options import ModelsDir

app = typer.Typer(help="Tortoise checkpoint files: download, random stand-ins, where they are.", no_args_is_help=True)
console = Console()


@app.command()
def download(models_dir: ModelsDir = None) -> None:
    """Download the six official checkpoint files and hifidecoder.pth (about 3 GB) from Hugging Face; resumes if interrupted."""
    from tutortoietts.engine import checkpoints

    target = checkpoints.download(models_dir)
    console.print(f"weights ready in {target}")


@app.command("init-random")
def init_random(
    directory: Annotated[Path, typer.Argument(help="Folder to write the seven .pth files (hifidecoder.pth included) and tortoise-config.json into.")],
    config: Annotated[str, typer.Option("--config", help="Network sizes: tiny (tests, seconds on a CPU) or full (official).")] = "tiny",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight checkpoint set in the official format, hifidecoder.pth included (for tests and offline smoke runs)."""
    from tutortoietts.engine import checkpoints

    folder = checkpoints.write_random_checkpoints(directory, config, seed=seed)
    console.print(f"random {config} weights (seed {seed}) written to {folder}; they make noise, not speech")


@app.command()
def where(models_dir: ModelsDir = None) -> None:
    """Show the folders searched, the one used, its files and sizes, and the network configuration."""
    from tutortoietts.engine import checkpoints, configs

    console.print("searched, in order:")
    for folder in checkpoints.search_folders(models_dir):
        console.print(f"  {folder}")
    folder = checkpoints.find_models_dir(models_dir)
    table = Table(title=f"using {folder}")
    table.add_column("file")
    table.add_column("size", justify="right")
    for name in checkpoints.FILES.values():
        table.add_row(name, f"{(folder / name).stat().st_size / 2**20:,.1f} MiB")
    for name in checkpoints.OPTIONAL_FILES.values():  # only the hifi decoder needs it
        present = (folder / name).is_file()
        table.add_row(name, f"{(folder / name).stat().st_size / 2**20:,.1f} MiB" if present else "absent (optional: decoder hifi)")
    console.print(table)
    config = checkpoints.read_config(folder)
    named = next((name for name, sizes in configs.NAMED.items() if configs.resolve(sizes) == config), None)
    source = checkpoints.CONFIG_FILE if (folder / checkpoints.CONFIG_FILE).is_file() else "official defaults"
    console.print(f"config: {named or 'custom'} (from {source}); fingerprint {checkpoints.weights_fingerprint(folder)}")
    if named is None:
        console.print(json.dumps(config, indent=2))
