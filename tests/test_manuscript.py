"""Manuscript parsing: chapters from headings, paragraphs, markdown stripped, clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Chapter, parse_text, read_book

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "book.md"


def titles(book: Book) -> list[str]:
    return [chapter.title for chapter in book.chapters]


def test_text_without_headings_is_one_chapter_with_joined_lines():
    book = parse_text("It was a dark\nand stormy night.\n\n\nThe end.\n", "txt", "story")
    assert book == Book(title="story", chapters=(Chapter(title="", paragraphs=("It was a dark and stormy night.", "The end.")),))


@pytest.mark.parametrize(
    "line, title",
    [
        ("Chapter 12", "Chapter 12"),
        ("Chapter Twelve", "Chapter Twelve"),
        ("CHAPTER XII.", "CHAPTER XII"),
        ("Chapter Twenty-One: The Storm", "Chapter Twenty-One: The Storm"),
        ("Chapter 3. A Walk", "Chapter 3: A Walk"),
        ("Chapter 4 \u2014 Home", "Chapter 4: Home"),
        ("Part One", "Part One"),
        ("Prologue", "Prologue"),
        ("EPILOGUE: After", "EPILOGUE: After"),
    ],
)
def test_chapter_lines(line, title):
    book = parse_text(f"Before.\n\n{line}\n\nInside.", "txt", "x")
    assert titles(book) == ["", title]
    assert book.chapters[1].paragraphs == ("Inside.",)


def test_prose_that_starts_like_a_heading_is_not_one():
    book = parse_text("Chapter one of my life was hard.\n\nBook two was better.", "txt", "x")
    assert titles(book) == [""]
    assert len(book.chapters[0].paragraphs) == 2


def test_no_untitled_opening_when_text_starts_with_a_heading():
    book = parse_text("\n\nPrologue\n\nOnce.\n\nChapter 1\nTwice.\n", "txt", "x")
    assert titles(book) == ["Prologue", "Chapter 1"]
    assert book.chapters[1].paragraphs == ("Twice.",)


def test_subtitle_line_and_empty_heading_merge():
    book = parse_text("PART ONE\n\nCHAPTER I\nThe Storm\n\nRain fell.\n\nChapter 2\n", "txt", "x")
    # "Part One" has no text of its own; the trailing "Chapter 2" has none at all.
    assert titles(book) == ["PART ONE. CHAPTER I: The Storm"]
    assert book.chapters[0].paragraphs == ("Rain fell.",)


def test_bom_crlf_nbsp_and_smart_typography_survive():
    text = "\ufeffChapter 1\r\n\r\n\u201cHello,\u201d she said\u00a0\u2014 \u2018twice\u2019.\r\nAgain.\u200b\r\n"
    book = parse_text(text, "txt", "x")
    assert titles(book) == ["Chapter 1"]
    assert book.chapters[0].paragraphs == ("\u201cHello,\u201d she said \u2014 \u2018twice\u2019. Again.",)


def test_markdown_structure_and_inline_markup():
    text = """# The Little Book

A *short* intro with a [link](https://example.com) and ![a map](map.png) and `code`.

## Chapter 1: Start

Para **one**
continues _here_ and ~~there~~.

- first item
- second item

> A quoted line.

### A minor heading

* * *

## Chapter 2

Last words\\*.
"""
    book = parse_text(text, "md", "stem")
    assert book.title == "The Little Book"
    assert titles(book) == ["", "Chapter 1: Start", "Chapter 2"]
    assert book.chapters[0].paragraphs == ("A short intro with a link and and code.",)
    assert book.chapters[1].paragraphs == (
        "Para one continues here and there.",
        "first item",
        "second item",
        "A quoted line.",
        "A minor heading",
    )
    assert book.chapters[2].paragraphs == ("Last words*.",)


def test_markdown_title_rules():
    several = parse_text("# One\n\nText.\n\n# Two\n\nMore.", "md", "stem")
    assert several.title == "stem" and titles(several) == ["One", "Two"]
    chapter_top = parse_text("# Chapter 1\n\nText.", "md", "stem")
    assert chapter_top.title == "stem" and titles(chapter_top) == ["Chapter 1"]
    setext = parse_text("My Title\n========\n\nIntro.\n\nPart\n----\n\nBody.", "md", "stem")
    assert setext.title == "My Title" and titles(setext) == ["", "Part"]


def test_read_book_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_book(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="directory"):
        read_book(tmp_path)
    (tmp_path / "book.odt").write_text("x")  # (.epub was unsupported until the EPUB reader; see test_epub.py)
    with pytest.raises(UserError, match="unsupported manuscript type '.odt'"):
        read_book(tmp_path / "book.odt")
    (tmp_path / "empty.txt").write_text(" \n\n\t\n")
    with pytest.raises(UserError, match="empty"):
        read_book(tmp_path / "empty.txt")
    (tmp_path / "headings.md").write_text("# Title\n\n## Chapter 1\n")
    with pytest.raises(UserError, match="empty"):
        read_book(tmp_path / "headings.md")
    (tmp_path / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(UserError, match="binary"):
        read_book(tmp_path / "binary.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_book(tmp_path / "latin1.txt")


def test_read_book_encodings(tmp_path):
    path = tmp_path / "My Story.txt"
    path.write_bytes("\ufeffCaf\u00e9 time.".encode("utf-8"))
    assert read_book(path) == Book(title="My Story", chapters=(Chapter("", ("Caf\u00e9 time.",)),))
    path.write_bytes("Caf\u00e9 time.".encode("utf-16"))
    assert read_book(path).chapters[0].paragraphs == ("Caf\u00e9 time.",)


def test_example_manuscript_parses():
    book = read_book(EXAMPLE)
    words = sum(len(p.split()) for chapter in book.chapters for p in chapter.paragraphs)
    print(f"[manuscript] {EXAMPLE.name}: '{book.title}', chapters {titles(book)}, {words} words")
    assert 3 <= len(book.chapters) <= 4
    assert 150 <= words <= 250
    assert all(chapter.title for chapter in book.chapters)
