"""PDF (pypdf): the text layer only, chapters from the outline when there is one; scans are refused."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Chapter, Metadata, ReadOptions, tidy_text

PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?[\divxlcdm]{1,6}(?:\s+of\s+\d+)?\s*$", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?:\"'\u201d\u2019)\]]$")


def read(path: Path, options: ReadOptions) -> Book:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on sloppy files are not the user's business
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UserError(f"{path.name} is password-protected: use an unprotected copy")
        pages = [tidy_text(page.extract_text() or "") for page in reader.pages]
        outline = outline_entries(reader)
        info = reader.metadata or {}
        language = str(reader.trailer["/Root"].get("/Lang", "") or "")
    except UserError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OSError) as error:
        raise UserError(f"{path.name} cannot be read as a PDF ({type(error).__name__}: {error})") from None
    if not any(re.search(r"\w", page) for page in pages):
        raise UserError(f"{path.name} has no text layer (a scanned PDF?): run OCR on it first (e.g. ocrmypdf) or use the text")
    pages = drop_running_lines(pages)
    title = str(info.get("/Title", "") or "").strip() or path.stem
    chapters = split_by_outline(pages, outline) if outline else [Chapter("", tuple(paragraphs("\n".join(pages))))]
    chapters = [chapter for chapter in chapters if chapter.paragraphs]
    if not chapters:
        raise UserError(f"manuscript is empty: no text to read in '{path.name}'")
    authors = tuple(name.strip() for name in re.split(r";|,|\band\b", str(info.get("/Author", "") or "")) if name.strip())
    metadata = Metadata(authors=authors, language=language.strip(), description=str(info.get("/Subject", "") or "").strip())
    return Book(title=title, chapters=tuple(chapters), metadata=metadata)


def outline_entries(reader) -> list[tuple[str, int]]:
    """(title, first page index) of the outline's top two levels, in page order."""
    entries = []

    def walk(items, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                if depth < 1:
                    walk(item, depth + 1)
                continue
            try:
                number = reader.get_destination_page_number(item)
            except Exception:  # an outline entry pointing nowhere is skipped, not the book
                continue
            title = " ".join(str(item.title or "").split())
            if number is not None and number >= 0 and title:
                entries.append((title, number))

    walk(reader.outline, 0)
    return sorted(entries, key=lambda entry: entry[1])


def drop_running_lines(pages: list[str]) -> list[str]:
    """Page numbers, and a header or footer line repeated on most pages, are not read."""
    lines_per_page = [[line.strip() for line in page.split("\n")] for page in pages]
    counts = Counter(line for lines in lines_per_page for line in set(lines) if line)
    repeated = {line for line, count in counts.items() if len(pages) >= 4 and count >= 0.6 * len(pages)}
    return ["\n".join(line for line in lines if line not in repeated and not PAGE_NUMBER.match(line)) for lines in lines_per_page]


def split_by_outline(pages: list[str], outline: list[tuple[str, int]]) -> list[Chapter]:
    """Text from each entry's page (from its title's line when found there) to the next entry's."""
    starts = []
    for title, number in outline:
        offset = locate_title(pages[number], title) if number < len(pages) else 0
        starts.append((number, offset, title))
    chapters = []
    before = "\n".join(pages[: starts[0][0]]) + "\n" + pages[starts[0][0]][: starts[0][1]]
    if re.search(r"\w", before):
        chapters.append(Chapter("", tuple(paragraphs(before))))
    for position, (number, offset, title) in enumerate(starts):
        end_page, end_offset = (starts[position + 1][:2] if position + 1 < len(starts) else (len(pages) - 1, None))
        if end_page == number:
            text = pages[number][offset:end_offset]
        else:
            text = "\n".join([pages[number][offset:], *pages[number + 1 : end_page], pages[end_page][:end_offset]])
        body = paragraphs(text)
        if body and comparable(body[0]).startswith(comparable(title)):
            rest = body[0][len(title):].strip() if body[0].lower().startswith(title.lower()) else ""
            body = ([rest] if rest else []) + body[1:]
        chapters.append(Chapter(title, tuple(body)))
    return chapters


def locate_title(page: str, title: str) -> int:
    """Where the title's line starts on its page, else 0 (the chapter starts with the page)."""
    match = re.search(r"(?im)^\s*" + r"\s+".join(map(re.escape, title.split())), page)
    return match.start() if match else 0


def comparable(text: str) -> str:
    return "".join(char for char in text.casefold() if char.isalnum())


def paragraphs(text: str) -> list[str]:
    """Lines to paragraphs: a blank line, or a short line that ends a sentence, ends one; hyphens rejoin."""
    lines = [line.strip() for line in text.split("\n")]
    lengths = [len(line) for line in lines if line]
    typical = statistics.median(lengths) if lengths else 0
    result, current = [], []
    for line in lines:
        if not line:
            if current:
                result.append(join_lines(current))
                current = []
            continue
        current.append(line)
        if SENTENCE_END.search(line) and len(line) < 0.8 * typical:
            result.append(join_lines(current))
            current = []
    if current:
        result.append(join_lines(current))
    return [paragraph for paragraph in result if re.search(r"\w", paragraph)]


def join_lines(lines: list[str]) -> str:
    text = ""
    for line in lines:
        if text.endswith("-") and len(text) > 1 and text[-2].isalpha() and line[:1].islower():
            text = text[:-1] + line  # "exam-" + "ple": one word broken by the line end
        else:
            text = f"{text} {line}" if text else line
    return " ".join(text.split())
