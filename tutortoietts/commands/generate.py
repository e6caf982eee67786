"""`tutortoietts generate`: a manuscript to an audiobook, with live progress and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tutortoietts.commands.options import Asr, AsrModel, LexiconFile, Retries
from tutortoietts.commands.options import BatchChunks, Device, IncludeFrontMatter, Master, ModelsDir, Precision, Preset, Quiet, Seed
from tutortoietts.errors import UserError

DEFAULT_PRESET = "balanced_v2"

console = Console(stderr=True)  # progress and tables on stderr; stdout carries only the output path(s)


def parse_set_options(values: list[str]) -> dict:
    """`--set key=value` pairs to typed overrides (true/false, int, float, else text); Settings validates them."""
    overrides = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise UserError(f"--set wants key=value (e.g. --set diffusion_iterations=20), got {item!r}")
        overrides[key] = _parse_value(raw)
    return overrides


def _parse_value(raw: str):
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.startswith("[") and raw.endswith("]"):  # a list of whole numbers: diffusion_steps_range, ar_layers
        try:
            return [int(part) for part in raw[1:-1].split(",") if part.strip()]
        except ValueError:
            pass
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def print_notice(event) -> None:
    """Repairs and problems that do not stop the run (a rebuilt job database, a cache that cannot be written)."""
    if event.kind == "notice":
        console.print(f"[yellow]note:[/] {event.message}", highlight=False)


MAX_WORKER_ROWS = 16  # actors listed one per line under the bar; the rest are summed in one line


def worker_table(workers) -> Table:
    """One line per Ray actor (cluster.WorkerStat): where it runs, its chunks and its throughput."""
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("actor", "where", "state", "chunks", "chunks/min", "audio x real time"):
        table.add_column(column, justify="right" if column not in ("actor", "where", "state") else "left")
    for stat in workers[:MAX_WORKER_ROWS]:
        table.add_row(stat.name, stat.where, stat.state, str(stat.chunks), f"{60 * stat.chunks_per_second:.1f}",
                      f"{stat.audio_per_second:.2f}")
    rest = workers[MAX_WORKER_ROWS:]
    if rest:
        table.add_row(f"{len(rest)} more", "", "", str(sum(s.chunks for s in rest)),
                      f"{60 * sum(s.chunks_per_second for s in rest):.1f}", f"{sum(s.audio_per_second for s in rest):.2f}")
    return table


class WorkersProgress(Progress):
    """The progress bar, and under it each worker's throughput when the renderer has several (Ray)."""

    workers: tuple = ()

    def get_renderables(self):
        yield from super().get_renderables()
        if self.workers:
            yield worker_table(self.workers)


class ProgressDisplay:
    """Turns render events into one Rich progress bar: chapter, chunk i/n, ETA, audio seconds, RTF (and Ray's actors)."""

    def __init__(self):
        self.progress = WorkersProgress(
            TextColumn("[bold]{task.fields[chapter]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("audio {task.fields[audio]}"),
            TextColumn("RTF {task.fields[rtf]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, event) -> None:
        if event.kind == "notice":
            print_notice(event)
            return
        if event.kind == "start":
            self.task = self.progress.add_task(
                "render", total=event.total, completed=event.done, chapter="rendering", eta="-", audio="0:00", rtf="-"
            )
            return
        if self.task is None:
            return
        rtf = event.real_time_factor
        if event.kind == "chunk":
            self.progress.workers = event.workers
            self.progress.update(
                self.task, completed=event.done, chapter=event.chapter_title or event.chunk_name,
                eta=_format_seconds(event.eta_seconds), audio=_format_seconds(event.audio_seconds),
                rtf=f"{rtf:.2f}" if rtf is not None else "-",
            )
        elif event.kind == "stitch":
            self.progress.update(self.task, completed=event.done, chapter="stitching", eta="-")


def summary_table(summary) -> Table:
    table = Table(title="audiobook ready", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("chunks", f"{summary.total} total: {summary.rendered} rendered ({summary.from_ar_cache} from cached codes), "
                  f"{summary.from_audio_cache} from cache, {summary.already_done} already in the job")
    table.add_row("audio", f"{_format_seconds(summary.audio_seconds)} in chunks ({summary.run_audio_seconds:.1f} s made by this run)")
    table.add_row("wall time", f"{summary.wall_seconds:.1f} s")
    rtf = summary.real_time_factor
    table.add_row("real-time factor", f"{rtf:.3f} (wall seconds per second of audio made)" if rtf is not None else "- (nothing to make)")
    table.add_row("job folder", str(summary.job_dir))
    for path in summary.outputs:
        table.add_row("output" if path == summary.outputs[0] else "chapter", str(path))
    return table


def record_run(request, summary) -> None:
    """This machine's measured speed for the preset, for `tutortoietts chapters` estimates."""
    from tutortoietts.speed import record_speed

    if summary.rendered and summary.run_audio_seconds > 0:
        record_speed(request.preset, request.device, summary.wall_seconds, summary.run_audio_seconds, request.models_dir)


def generate(
    book: Annotated[Path, typer.Argument(help="The manuscript: .epub, .txt, .md, .html, .docx or .pdf (chapters from its navigation or headings).")],
    voice: Annotated[Optional[str], typer.Option("--voice", "-v", help="Voice name (see `tutortoietts voices`), a folder or file of clips, or 'random'.")] = None,
    preset: Preset = DEFAULT_PRESET,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Job folder (default ./<book name>-audiobook/); rerun to resume.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="m4b (chapters), mp3 (one file per chapter) or wav; default m4b (mp3 for --master acx).")] = None,
    models_dir: ModelsDir = None,
    device: Device = "auto",
    precision: Precision = None,
    seed: Seed = 0,
    title: Annotated[Optional[str], typer.Option("--title", help="Book title in the tags (default: the manuscript's).")] = None,
    author: Annotated[Optional[str], typer.Option("--author", help="Author in the tags.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Render every chunk again, ignoring the job's finished chunks and the cache.")] = False,
    settings: Annotated[Optional[list[str]], typer.Option("--set", help="Override one preset value, key=value; repeatable.")] = None,
    quiet: Quiet = False,
    encoding: Annotated[Optional[str], typer.Option("--encoding", help="The manuscript's text encoding when it is not UTF-8 or UTF-16 (e.g. cp1252, latin-1).")] = None,
    low_vram: Annotated[bool, typer.Option("--low-vram", help="Keep the networks in CPU memory and move each to the GPU only for its stage (for small GPUs; slower).")] = False,
    chapters: Annotated[Optional[str], typer.Option("--chapters", help="A preview: render only these chapters now (e.g. 1,3-4, numbered as `tutortoietts chapters` lists them) into the job and its preview/ folder; a run without --chapters renders the rest.")] = None,
    batch_chunks: BatchChunks = "auto",
    cover: Annotated[Optional[Path], typer.Option("--cover", help="Cover image (JPEG/PNG) to embed instead of the book's own.")] = None,
    narrator: Annotated[Optional[str], typer.Option("--narrator", help="Narrator in the tags (default: 'Synthetic voice (<voice>)').")] = None,
    include_front_matter: IncludeFrontMatter = False,
    subtitles: Annotated[Optional[str], typer.Option("--subtitles", help="Also write subtitles, srt or vtt: one file per chapter and one for the book.")] = None,
    master: Master = "default",
    retries: Retries = 2,
    lexicon: LexiconFile = None,
    asr: Asr = False,
    asr_model: AsrModel = None,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Render on Ray actors, one engine per GPU: alone (or 'local'), start Ray on this machine; 'auto', HOST:PORT or ray://HOST:PORT joins a cluster (pip install 'tutortoietts[cluster]').")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="With --ray: at most this many actors (default one per GPU, or one per machine without GPUs).")] = None,
) -> None:
    """Turn a manuscript into an audiobook; an interrupted run resumes where it stopped."""
    from tutortoietts.render import RenderRequest, render_book

    if voice is None:
        raise UserError("choose a voice with --voice NAME (see `tutortoietts voices`), a folder of clips, or 'random'")
    from tutortoietts.mastering import load_profile

    profile = load_profile(master)
    if fmt and profile.format and fmt.lower() != profile.format:
        raise UserError(f"--master {profile.name} writes {profile.format} files: leave out --format or use --format {profile.format}")
    fmt = (fmt or profile.format or "m4b").lower()
    if ray is not None:
        from tutortoietts.cluster import check_address, import_ray

        import_ray()  # a missing Ray is one line now, not after planning
        check_address(ray)
    elif workers is not None:
        raise UserError("--workers sets the number of Ray actors: use it with --ray")
    request = RenderRequest(
        book=book, voice=voice, preset=preset, overrides=parse_set_options(settings or []), out_dir=out,
        fmt=fmt, models_dir=models_dir, device=device, precision=precision, seed=seed, title=title, batch_chunks=batch_chunks,
        author=author, force=force, chapters=chapters, low_vram=low_vram, encoding=encoding, cover=cover, narrator=narrator,
        include_front_matter=include_front_matter, subtitles=subtitles.lower() if subtitles else None, master=master,
        retries=retries, lexicon=lexicon, asr=asr or asr_model is not None, asr_model=asr_model,
        ray_address=ray, workers=workers,
    )
    if quiet:
        summary = render_book(request, progress=print_notice)
    else:
        with ProgressDisplay() as display:
            summary = render_book(request, progress=display)
        console.print(summary_table(summary))
    if ray is None:  # a cluster's pace is not this machine's
        record_run(request, summary)
    print(summary.outputs[0])  # the book; stdout carries nothing else, for scripts
