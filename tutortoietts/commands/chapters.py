"""`tutortoietts chapters BOOK`: a dry run. The chapters, their size and time, and the metadata found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tutortoietts.commands.options import Device, IncludeFrontMatter, ModelsDir, Preset

DEFAULT_PRESET = "balanced_v2"
console = Console()


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def plan_chapters(book_path: Path, preset: str, device: str, models_dir: Path | None, include_front_matter: bool,
                  encoding: str | None) -> dict:
    """What `generate` would make of the book, without rendering: per chapter words, chunks and times."""
    from tutortoietts.chunking import ChunkLimits, chunk_book
    from tutortoietts.engine.tokenizer import clean
    from tutortoietts.manuscript import read_book
    from tutortoietts.settings import load_preset
    from tutortoietts.speed import estimate
    from tutortoietts.stitch import PAUSE_SECONDS

    book = read_book(book_path, encoding, include_front_matter=include_front_matter)
    settings = load_preset(preset)
    limits = ChunkLimits(max_mel_tokens=settings.max_mel_tokens)
    speed = estimate(preset, settings, device, models_dir)
    rows = [{"number": number, "title": chapter.title, "words": sum(len(p.split()) for p in chapter.paragraphs),
             "chunks": 0, "speech_seconds": 0.0, "audio_seconds": 0.0}
            for number, chapter in enumerate(book.chapters, start=1)]
    for chunk in chunk_book(book, limits):
        row = rows[chunk.chapter]
        speech = len(clean(chunk.text)) / limits.chars_per_second  # chunking's own speaking-rate estimate
        row["chunks"] += 1
        row["speech_seconds"] += speech
        row["audio_seconds"] += speech + PAUSE_SECONDS[chunk.pause_after]
    for row in rows:
        row["render_seconds"] = row["speech_seconds"] * speed.seconds_per_audio_second
        row["audio_seconds"] = round(row["audio_seconds"], 1)
        row["render_seconds"] = round(row.pop("render_seconds"), 1)
        row.pop("speech_seconds")
    meta = book.metadata
    metadata = {
        "title": book.title, "authors": list(meta.authors), "narrators": list(meta.narrators), "language": meta.language,
        "publisher": meta.publisher, "date": meta.date, "identifier": meta.identifier, "isbn": meta.isbn,
        "description": meta.description, "series": meta.series, "series_index": meta.series_index,
        "cover": f"{meta.cover.media_type}, {meta.cover.width}x{meta.cover.height}" if meta.cover else None,
    }
    totals = {key: round(sum(row[key] for row in rows), 1) for key in ("words", "chunks", "audio_seconds", "render_seconds")}
    return {"book": str(book_path), "preset": preset, "metadata": metadata, "left_out": list(book.left_out),
            "chapters": rows, "totals": totals,
            "speed": {"seconds_per_audio_second": round(speed.seconds_per_audio_second, 3), "source": speed.source}}


def chapters(
    book: Annotated[Path, typer.Argument(help="The manuscript (.epub, .txt, .md, .html, .docx, .pdf).")],
    preset: Preset = DEFAULT_PRESET,
    as_json: Annotated[bool, typer.Option("--json", help="The same as JSON on stdout.")] = False,
    include_front_matter: IncludeFrontMatter = False,
    device: Device = "auto",
    models_dir: ModelsDir = None,
    encoding: Annotated[Optional[str], typer.Option("--encoding", help="Text encoding of a .txt/.md manuscript that is not UTF-8/UTF-16.")] = None,
) -> None:
    """Dry run: the chapter table (words, chunks, estimated audio and render time) and the metadata found."""
    plan = plan_chapters(book, preset, device, models_dir, include_front_matter, encoding)
    if as_json:
        print(json.dumps(plan, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{plan['metadata']['title']}: {len(plan['chapters'])} chapters")
    for column, justify in (("#", "right"), ("title", "left"), ("words", "right"), ("chunks", "right"),
                            ("audio (est.)", "right"), (f"render with {preset} (est.)", "right")):
        table.add_column(column, justify=justify)
    for row in plan["chapters"]:
        table.add_row(str(row["number"]), row["title"] or "(untitled)", f"{row['words']:,}", str(row["chunks"]),
                      clock(row["audio_seconds"]), clock(row["render_seconds"]))
    totals = plan["totals"]
    table.add_section()
    table.add_row("", "total", f"{totals['words']:,}", str(int(totals["chunks"])), clock(totals["audio_seconds"]),
                  clock(totals["render_seconds"]))
    console.print(table)
    speed = plan["speed"]
    console.print(f"render speed: {speed['seconds_per_audio_second']:.2f} s per second of audio ({speed['source']})", highlight=False)
    console.print("audio length: from the text at ~150 words a minute, pauses included", highlight=False)
    metadata = Table(title="metadata found", show_header=False)
    metadata.add_column("field")
    metadata.add_column("value")
    for key, value in plan["metadata"].items():
        if value:
            metadata.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(metadata)
    if plan["left_out"]:
        console.print(f"left out: {', '.join(plan['left_out'])} (--include-front-matter keeps front matter)", highlight=False)
