"""One reader per manuscript format behind one interface: read(path, ReadOptions) -> Book.

A new format is one new module here with a `read` function and one line in READERS.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from tutortoietts.errors import UserError

# File suffix -> the module (in this package) that reads it.
READERS = {
    ".txt": "text", ".text": "text", ".md": "text", ".markdown": "text",
    ".epub": "epub",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".docx": "docx",
    ".pdf": "pdf",
}  # fmt: skip


def reader_for(path: Path) -> Callable:
    """The `read` function for this file's format; an unknown suffix is one line naming the known ones."""
    module = READERS.get(Path(path).suffix.lower())
    if module is None:
        supported = ", ".join(sorted(READERS))
        raise UserError(f"unsupported manuscript type '{Path(path).suffix or Path(path).name}': use one of {supported}")
    return importlib.import_module(f"{__name__}.{module}").read
