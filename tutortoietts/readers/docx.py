"""Word documents (python-docx): Heading 1/2 styles open chapters, the Title style names the book."""

from __future__ import annotations

import re
from pathlib import Path

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Metadata, ReadOptions, group_chapters, take_book_title, tidy_text
from tutortoietts.readers import safety

HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def read(path: Path, options: ReadOptions) -> Book:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    with safety.open_zip(path, "DOCX") as archive:
        for info in archive.infolist():
            if info.filename.lower().endswith((".xml", ".rels")):
                safety.refuse_entities(safety.read_entry(archive, info.filename, path, "DOCX"), info.filename, path.name)
    try:
        document = docx.Document(str(path))
    except PackageNotFoundError:
        raise UserError(f"{path.name} is not a valid DOCX (no Word document inside)") from None
    except Exception as error:  # python-docx fails on malformed packages in many ways; each is the file's
        raise UserError(f"{path.name} cannot be read as a DOCX ({type(error).__name__}: {error})") from None
    blocks, title = [], ""
    for part in document.iter_inner_content():
        if hasattr(part, "rows"):  # a table: one paragraph per row, cells read in order
            for row in part.rows:
                cells = [clean(cell.text) for cell in row.cells]
                text = ", ".join(dict.fromkeys(cell for cell in cells if cell))  # merged cells repeat
                if text:
                    blocks.append(("para", 0, text))
            continue
        text = clean(part.text)
        if not text:
            continue
        style = (part.style.name if part.style is not None else "") or ""
        heading = HEADING_STYLE.match(style)
        if style.lower() == "title" and not title:
            title = text
        elif heading and int(heading.group(1)) <= 2:
            blocks.append(("heading", int(heading.group(1)), text))
        else:
            blocks.append(("para", 0, text))
    core = document.core_properties
    if not title:
        title, blocks = take_book_title(blocks, (core.title or "").strip() or path.stem)
    chapters = group_chapters(blocks)
    if not chapters:
        raise UserError(f"manuscript is empty: no text to read in '{path.name}'")
    authors = tuple(name.strip() for name in re.split(r";|,", core.author or "") if name.strip())
    metadata = Metadata(
        authors=authors, language=(core.language or "").strip(), description=(core.comments or core.subject or "").strip(),
        date=core.created.date().isoformat() if core.created else "", identifier=(core.identifier or "").strip(),
    )
    return Book(title=title, chapters=tuple(chapters), metadata=metadata)


def clean(text: str) -> str:
    return " ".join(tidy_text(text or "").split())
