"""`tutortoietts qa JOB_DIR`: the chunks the quality checks flag, as a table, JSON or an HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table


def qa(
    job_dir: Annotated[Path, typer.Argument(help="A job folder (what generate's --out names).")],
    as_json: Annotated[bool, typer.Option("--json", help='Print {"chunks": [...], "flagged": N, "total": M} instead of a table.')] = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a page with a player, the text, the figures and the redo command for each flagged chunk.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every chunk, not only the flagged ones.")] = False,
    asr: Annotated[bool, typer.Option("--asr", help="Run the speech-recognition check now on chunks rendered without it (pocketsphinx).")] = False,
) -> None:
    """Judge every chunk of a job: what each check found, which take was kept, how to render it again."""
    from tutortoietts.qa_report import job_report, render_html, table_rows

    report = job_report(job_dir, asr=asr)
    if html is not None:
        from tutortoietts.errors import UserError

        try:
            html.write_text(render_html(report, html), encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot write {html}: {error.strerror or error}") from None
    if as_json:
        shown = report if everything else {**report, "chunks": [c for c in report["chunks"] if c["flags"]]}
        print(json.dumps(shown, indent=2))
        return
    console = Console()
    table = Table(title=f"{report['flagged']} of {report['total']} chunks flagged", show_lines=False)
    for column in ("chunk", "chapter", "text", "check", "figures", "take kept"):
        table.add_column(column, overflow="fold")
    for row in table_rows(report, everything):
        table.add_row(*row)
    console.print(table)
    if report["pending"]:
        console.print(f"{report['pending']} chunk(s) not rendered yet: run generate on this job to finish it.")
    if report["measured_now"]:
        console.print(f"{report['measured_now']} chunk(s) had no recorded figures and were measured from their files now.")
    gate = report["gate"]
    if gate["check_share"] is not None:
        console.print(f"checks took {gate['check_seconds']:.1f} s over {gate['takes']} take(s), "
                      f"{100 * gate['check_share']:.1f}% of the {gate['render_seconds']:.0f} s spent rendering them.")
    if html is not None:
        console.print(f"page written: {html}")
