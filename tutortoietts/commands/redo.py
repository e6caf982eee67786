"""`tutortoietts redo JOB_DIR CHUNK...`: render chunks again with new seeds (or new text), then stitch the book again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tutortoietts.commands.options import Asr, AsrModel, LexiconFile, ModelsDir, Quiet


def redo(
    job_dir: Annotated[Path, typer.Argument(help="The job folder.")],
    chunks: Annotated[Optional[list[str]], typer.Argument(help="Chunk names as `tutortoietts qa` prints them (e.g. 0-3).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Replace the (one) named chunk's text, e.g. a corrected spelling.")] = None,
    lexicon: LexiconFile = None,
    retries: Annotated[Optional[int], typer.Option("--retries", min=0, help="Takes after the first for a chunk that still fails a check (default: the job's).")] = None,
    asr: Asr = False,
    asr_model: AsrModel = None,
    models_dir: ModelsDir = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N or auto (default: the job's).")] = None,
    quiet: Quiet = False,
) -> None:
    """Render named chunks of a finished job again with a new seed, or with corrected text, and re-stitch the book."""
    from rich.table import Table

    from tutortoietts.commands.generate import ProgressDisplay, console, print_notice
    from tutortoietts.redo import redo as redo_chunks

    options = dict(text=text, lexicon=lexicon, retries=retries, asr=True if asr or asr_model else None,
                   asr_model=asr_model, models_dir=models_dir, device=device)
    if quiet:
        summary = redo_chunks(job_dir, chunks or [], progress=print_notice, **options)
    else:
        with ProgressDisplay() as display:
            summary = redo_chunks(job_dir, chunks or [], progress=display, **options)
        table = Table(title=f"{len(summary.redone)} chunk(s) rendered again, book stitched again")
        for column in ("chunk", "take kept", "checks failed", "text"):
            table.add_column(column, overflow="fold")
        for item in summary.redone:
            table.add_row(item["name"], str(item["attempt"] or "-"), ", ".join(item["flags"] or []) or "none",
                          item["text"][:60])
        console.print(table)
    print(summary.outputs[0])
