"""Manuscripts: the Book model (chapters, metadata, cover), read_book over the format readers, and text/markdown structure."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from tutortoietts.errors import UserError

# Words a chapter-like heading may be numbered with: digits, roman numerals or English words.
NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred first second third fourth fifth sixth seventh eighth ninth tenth last final"
)
_NUMBER = rf"(?:\d+|[ivxlcdm]+|(?:(?:{'|'.join(NUMBER_WORDS.split())})[\s-]*)+)"
# "Chapter 12", "CHAPTER XII.", "Chapter Twelve: The Storm", "Part One", "Book 2 - Home",
# "Prologue", "Epilogue: After". Case-insensitive; the optional title follows ': ', '. ' or a dash.
CHAPTER_LINE = re.compile(
    rf"^(?P<label>(?:chapter|part|book|volume)\s+{_NUMBER}|prologue|epilogue|preface|introduction|foreword|afterword)"
    r"\s*(?:(?:[.:]|\s[-\u2013\u2014]|[\u2013\u2014])\s*(?P<title>.*?))?\s*\.?$",
    re.IGNORECASE,
)
SETEXT_UNDERLINE = re.compile(r"^(=+|-+)\s*$")
HORIZONTAL_RULE = re.compile(r"^\s*(?:(?:\*\s*){3,}|(?:-\s*){3,}|(?:_\s*){3,})$")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
FENCE = re.compile(r"^\s*(```|~~~)")
# "(url)" after a link's text; one level of parentheses inside, as in Wikipedia's "Foo_(bar)".
LINK_TARGET = r"\((?:[^()]|\([^()]*\))*\)"

# Characters that only disturb parsing: zero-width marks, soft hyphens, the BOM inside a text.
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# Every unicode space (no-break, thin, ideographic...) reads as a plain space.
UNICODE_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# The control characters (unicode category Cc) but the newline, and the unicode line breaks.
CONTROLS = {code: " " for code in [*range(0x20), *range(0x7F, 0xA0)] if code != 0x0A} | {0x2028: "\n", 0x2029: "\n\n"}
# Chapter lines are short; a longer line is prose (and CHAPTER_LINE backtracks badly on long ones).
MAX_CHAPTER_LINE_CHARS = 200


@dataclass(frozen=True)
class Chapter:
    title: str  # "" for the untitled opening text before the first heading
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Cover:
    """The book's cover image, as its file holds it."""

    data: bytes = field(repr=False)
    media_type: str  # "image/jpeg" | "image/png"
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Metadata:
    """What the manuscript says about itself; empty where its format carries nothing (plain text)."""

    authors: tuple[str, ...] = ()
    narrators: tuple[str, ...] = ()
    language: str = ""  # a BCP 47 tag as the book gives it ("en", "en-GB")
    publisher: str = ""
    date: str = ""  # as given ("2019", "2019-05-02T00:00:00Z")
    identifier: str = ""
    isbn: str = ""
    description: str = ""  # plain text
    series: str = ""
    series_index: str = ""  # "2", "2.5": a position, kept as written
    cover: Cover | None = None

    @property
    def year(self) -> str:
        match = re.match(r"\s*(\d{4})", self.date)
        return match.group(1) if match else ""


@dataclass(frozen=True)
class Book:
    title: str
    chapters: tuple[Chapter, ...]
    metadata: Metadata = Metadata()
    left_out: tuple[str, ...] = ()  # what the reader chose not to read: "Copyright (front matter)"


@dataclass(frozen=True)
class ReadOptions:
    """What the user may tell a reader beyond the path."""

    encoding: str | None = None  # for plain text that is not UTF-8/UTF-16
    include_front_matter: bool = False  # cover, title page, copyright, contents, index (EPUB)


def read_book(path: Path, encoding: str | None = None, *, include_front_matter: bool = False) -> Book:
    """Read a manuscript of any supported format; every problem a user can fix is one UserError line.

    One reader per format (tutortoietts/readers/), chosen by the file's suffix. `encoding` (e.g.
    "cp1252") is for text manuscripts that are not UTF-8 or UTF-16.
    """
    from tutortoietts.readers import reader_for

    path = Path(path)
    if not path.exists():
        raise UserError(f"manuscript not found: {path}")
    if path.is_dir():
        raise UserError(f"manuscript is a directory, not a file: {path}")
    reader = reader_for(path)
    return reader(path, ReadOptions(encoding=encoding, include_front_matter=include_front_matter))


def parse_text(text: str, kind: str, fallback_title: str) -> Book:
    """Split a manuscript text into chapters and paragraphs; kind is "txt" or "md"."""
    if kind not in ("txt", "md"):
        raise ValueError(f"kind must be 'txt' or 'md', not {kind!r}")
    lines = tidy_text(text).split("\n")
    blocks = markdown_blocks(lines) if kind == "md" else text_blocks(lines)
    book_title = fallback_title
    if kind == "md":
        book_title, blocks = take_book_title(blocks, fallback_title)
    chapters = group_chapters(blocks)
    if not chapters:
        raise UserError(f"manuscript is empty: no text to read in '{fallback_title}'")
    return Book(title=book_title, chapters=tuple(chapters))


def tidy_text(text: str) -> str:
    """Line endings, invisible characters and exotic spaces made plain; letters untouched."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text).translate(INVISIBLE)
    text = UNICODE_SPACES.sub(" ", text)
    # Tabs and other control characters (form feeds in old e-texts) are whitespace to us; the
    # unicode line and paragraph separators (some word processors' exports) break like newlines.
    return text.translate(CONTROLS)


# A block is ("heading", level, text) or ("para", 0, text); level 0 marks a chapter-pattern line.


def text_blocks(lines: list[str]) -> list[tuple[str, int, str]]:
    """Plain text: blank lines separate paragraphs, a chapter-pattern line is a heading."""
    blocks = []
    for group in blank_separated(lines):
        blocks.extend(split_heading_lines(group))
    return blocks


def blank_separated(lines: list[str]) -> list[list[str]]:
    groups, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def split_heading_lines(group: list[str]) -> list[tuple[str, int, str]]:
    """A chapter line may sit in the same block as its text; hard-wrapped lines join with spaces."""
    blocks, body = [], []
    for line in group:
        if match_chapter_line(line):
            if body:
                blocks.append(("para", 0, " ".join(body)))
                body = []
            blocks.append(("heading", 0, heading_title(line)))
        elif blocks and blocks[-1][0] == "heading" and not body and looks_like_subtitle(line, group):
            # "CHAPTER IV\nThe Storm": the short line right under a chapter line is its title.
            kind, level, heading = blocks[-1]
            blocks[-1] = (kind, level, f"{heading}: {line}")
        else:
            body.append(line)
    if body:
        blocks.append(("para", 0, " ".join(body)))
    return blocks


def looks_like_subtitle(line: str, group: list[str]) -> bool:
    return len(group) == 2 and len(line) <= 60 and not line.endswith((".", "!", "?", ",", ";"))


def markdown_blocks(lines: list[str]) -> list[tuple[str, int, str]]:
    """Markdown: ATX/setext headings, paragraphs, list items, quotes, fences; inline markup stripped."""
    blocks, body, in_fence = [], [], False

    def close_paragraph():
        if body:
            text = strip_inline_markdown(" ".join(body))
            if text:
                blocks.append(("para", 0, text))
            body.clear()

    for raw in lines:
        if FENCE.match(raw):
            # Code is read as text, one paragraph per fence; the fence lines themselves are not.
            close_paragraph()
            in_fence = not in_fence
            continue
        line = raw.strip()
        if in_fence:
            if line:
                body.append(line)
            continue
        line = re.sub(r"^(?:>\s?)+", "", line).strip()  # block quotes read as plain paragraphs
        if not line or HORIZONTAL_RULE.match(line) and not (body and SETEXT_UNDERLINE.match(line)):
            close_paragraph()
            continue
        if re.match(r"^\[[^\]]+\]:\s*\S+", line):  # reference-link definition: nothing to read
            continue
        heading = atx_heading(line)
        if heading:
            close_paragraph()
            blocks.append(markdown_heading(*heading))
            continue
        if body and SETEXT_UNDERLINE.match(line):
            # "Title\n=====" is a level-1 heading, "Title\n-----" level 2: it takes the last line.
            title = body.pop()
            close_paragraph()
            blocks.append(markdown_heading(1 if line.startswith("=") else 2, title))
            continue
        if LIST_ITEM.match(line):
            # Each list item is its own paragraph, so items do not run together when spoken.
            close_paragraph()
            line = LIST_ITEM.sub("", line)
        if not body and match_chapter_line(strip_inline_markdown(line)):
            blocks.append(("heading", 0, heading_title(strip_inline_markdown(line))))
            continue
        body.append(line)
    close_paragraph()
    return blocks


def atx_heading(line: str) -> tuple[int, str] | None:
    """"## Title ##" -> (2, "Title"); None for a line that is no ATX heading (a stripped line).

    Plain string work, not a regex: "^#+\\s+(.*?)\\s*#*\\s*$" backtracked cubically on a run of
    spaces inside the heading (4000 spaces: 80 s). The closing #s go only after a space (CommonMark).
    """
    level = len(line) - len(line.lstrip("#"))
    rest = line[level:]
    if not 1 <= level <= 6 or not rest[:1].isspace():
        return None
    text = rest.strip()
    without_closing = text.rstrip("#")
    if not without_closing or without_closing[-1].isspace():
        text = without_closing.strip()
    return level, text


def markdown_heading(level: int, text: str) -> tuple[str, int, str]:
    """# and ## start chapters; deeper headings are read as a line of text."""
    text = strip_inline_markdown(text)
    if level <= 2:
        return ("heading", level, heading_title(text))
    return ("para", 0, text)


def heading_title(text: str) -> str:
    """"CHAPTER XII." -> "CHAPTER XII"; "Chapter Twelve. The Storm" -> "Chapter Twelve: The Storm"."""
    match = match_chapter_line(text)
    if not match:
        return text.strip()
    label, title = match.group("label").strip(), (match.group("title") or "").strip()
    return f"{label}: {title}" if title else label


def match_chapter_line(line: str) -> re.Match | None:
    """CHAPTER_LINE on the line with its spaces collapsed, for short lines only.

    Both keep the regex fast: its optional spaces and dashes backtracked cubically on a run of
    spaces ("Chapter one" + 4000 spaces + "!" took minutes).
    """
    line = " ".join(line.split())
    return CHAPTER_LINE.match(line) if len(line) <= MAX_CHAPTER_LINE_CHARS else None


def strip_inline_markdown(text: str) -> str:
    """Markup to plain words: images dropped, links keep their text, emphasis and code marks go.

    No pattern scans past the next opening mark of its kind ("[" for links, "<" for tags, an
    emphasis opener for emphasis): with ".*?" each unclosed mark scanned to the end of the
    paragraph, quadratic in a long one (a 5 MB line of "[" would have taken days).
    """
    text = re.sub(r"<!--(?:(?!<!--).)*?-->", " ", text)
    text = re.sub(rf"!\[[^\[\]]*\]{LINK_TARGET}", " ", text)  # images: the alt text is a caption, not the story
    text = re.sub(r"!\[[^\[\]]*\]\[[^\[\]]*\]", " ", text)
    text = re.sub(rf"\[([^\[\]]*)\]{LINK_TARGET}", r"\1", text)  # [text](url)
    text = re.sub(r"\[([^\[\]]*)\]\[[^\[\]]*\]", r"\1", text)  # [text][ref]
    text = re.sub(r"<(https?://[^<>\s]+)>", r"\1", text)
    text = re.sub(r"</?[A-Za-z][^<>]*>", " ", text)  # inline HTML tags such as <br> or <em>
    text = re.sub(r"`+([^`]*)`+", r"\1", text)
    text = re.sub(r"(\*\*|__)(?=\S)((?:(?!\1).)+?)(?<=\S)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?=\S)((?:(?!(?<![\w*])\*(?=\S)).)+?)(?<=\S)\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<![\w_])_(?=\S)((?:(?!(?<![\w_])_(?=\S)).)+?)(?<=\S)_(?![\w_])", r"\1", text)
    text = re.sub(r"~~(?=\S)((?:(?!~~).)+?)(?<=\S)~~", r"\1", text)
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!>~|])", r"\1", text)  # backslash escapes
    return re.sub(r"\s+", " ", text).strip()


def take_book_title(blocks, fallback_title: str):
    """A lone H1 at the very top names the book; several H1s are chapters and the file names it."""
    h1_count = sum(1 for kind, level, _ in blocks if kind == "heading" and level == 1)
    if blocks and blocks[0][:2] == ("heading", 1) and h1_count == 1 and not match_chapter_line(blocks[0][2]):
        return blocks[0][2] or fallback_title, blocks[1:]
    return fallback_title, blocks


def group_chapters(blocks) -> list[Chapter]:
    """Headings open chapters; a heading with no text of its own lends its title to the next one."""
    chapters: list[Chapter] = []
    title, paragraphs, pending_titles = "", [], []
    for kind, _, text in blocks:
        if kind == "para" and not text:
            continue  # "### #": a minor heading with no words has nothing to read
        if kind == "heading":
            if paragraphs:
                chapters.append(Chapter(title=title, paragraphs=tuple(paragraphs)))
                pending_titles = []
            elif title:
                # "Part One" straight followed by "Chapter 1": one chapter titled "Part One. Chapter 1".
                pending_titles.append(title)
            title, paragraphs = text, []
        else:
            if not paragraphs and pending_titles:
                title = ". ".join(pending_titles + [title])
                pending_titles = []
            paragraphs.append(text)
    if paragraphs:
        chapters.append(Chapter(title=title, paragraphs=tuple(paragraphs)))
    return chapters
