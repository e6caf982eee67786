"""Option aliases shared by every command, so the same flag reads the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelsDir = Annotated[
    Optional[Path],
    typer.Option("--models-dir", help="Folder with the Tortoise checkpoints (default: $TORTOISE_MODELS_DIR, then ~/.cache/tortoise/models)."),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when available).")]
Precision = Annotated[
    Optional[str],
    typer.Option("--precision", help="fp32, bf16, fp16 (CUDA only) or int8 (weight-only, autoregressive model); default: the preset's."),
]
Preset = Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `tutortoietts presets`).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed; the same seed and text give the same audio.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; only errors and the final path.")]
Master = Annotated[
    str,
    typer.Option("--master", help="Mastering profile: default, acx (Audible: 44.1 kHz 192k CBR MP3 per chapter), podcast (-16 LUFS), or your own (masters.toml)."),
]
IncludeFrontMatter = Annotated[
    bool,
    typer.Option("--include-front-matter", help="EPUB: also read the cover page, title page, copyright, contents and index (left out by default)."),
]
# The quality gate (gate.py, qa.py) and pronunciations (lexicon.py): generate and redo read them alike.
Retries = Annotated[
    int,
    typer.Option("--retries", min=0, help="Quality gate: render a chunk that fails a check up to N more times (seeds derived from the chunk's), keeping the best take."),
]
LexiconFile = Annotated[
    Optional[Path],
    typer.Option("--lexicon", help='Pronunciation respellings (TOML: word = "respelling"; under \\[regex]: pattern = "respelling"), on top of ~/.config/tutortoietts/lexicon.toml.'),
]
Asr = Annotated[
    bool,
    typer.Option("--asr", help="Quality gate: also check each take with offline speech recognition (pocketsphinx: a few percent of real time on one CPU core)."),
]
AsrModel = Annotated[
    Optional[Path],
    typer.Option("--asr-model", help="A local faster-whisper model folder to check takes with instead of pocketsphinx (implies --asr; never downloaded)."),
]
BatchChunks = Annotated[
    str,
    typer.Option("--batch-chunks", metavar="N|auto", help="Chunks decoded together in one batch: auto (from free memory and the preset), a number, or 1 for one chunk at a time."),
]
