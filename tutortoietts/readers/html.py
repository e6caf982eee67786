"""HTML and XHTML: the block walker EPUB shares (what is read, where pauses fall) and the .html reader."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Metadata, ReadOptions, group_chapters, take_book_title, tidy_text

EPUB_NS = "http://www.idpf.org/2007/ops"
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements that end a paragraph: each one's text is read as its own paragraph, so lists, block
# quotes, table rows and headings keep the pause after them (chunking pauses between paragraphs).
BLOCKS = {
    "p", "div", "section", "article", "main", "body", "blockquote", "ul", "ol", "li", "dl", "dt", "dd", "pre",
    "header", "footer", "figure", "figcaption", "table", "thead", "tbody", "tfoot", "tr", "caption", "address",
    "center", "aside", "details", "summary", "hgroup", "hr", "html", "poem", "stanza", "linegroup",
}  # fmt: skip
CELLS = {"td", "th"}
# Never spoken: code, media and their alt text, forms, ruby readings (the base text is read).
SILENT_TAGS = {
    "head", "script", "style", "noscript", "template", "img", "image", "svg", "math", "audio", "video", "object",
    "iframe", "embed", "canvas", "map", "area", "button", "input", "select", "textarea", "rt", "rp", "picture",
    "source", "track", "meta", "link", "title",
}  # fmt: skip
# epub:type / role values that are never read, front matter flag or not: notes, their markers, page numbers.
NEVER_READ = {
    "pagebreak", "noteref", "footnote", "footnotes", "endnote", "endnotes", "rearnote", "rearnotes", "note",
    "notes", "annoref", "annotation", "biblioref", "backlink", "landmarks", "page-list", "doc-noteref",
    "doc-pagebreak", "doc-footnote", "doc-endnote", "doc-endnotes", "doc-backlink", "doc-biblioref", "doc-pagelist",
}  # fmt: skip
# Front and back matter: left out unless --include-front-matter.
FRONT_MATTER = {
    "cover", "titlepage", "halftitlepage", "halftitle", "copyright-page", "toc", "index", "loi", "lot", "loa",
    "lov", "colophon", "imprint", "imprimatur", "errata", "seriespage", "other-credits", "contributors",
    "bibliography", "frontispiece", "doc-toc", "doc-index", "doc-colophon", "doc-cover", "doc-credits",
    "doc-errata", "doc-bibliography",
}  # fmt: skip
# The text of a link or superscript that is a note marker: "1", "[12]", "*", "†", "iv", "a".
NOTE_MARKER = re.compile(r"^[\s\[\(]*(?:\d{1,4}|[ivxlcdm]{1,6}|[a-z]|[*\u2020\u2021\u00a7\u00b6#]{1,3})[\s\]\)\.,]*$", re.IGNORECASE)
HAS_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class Block:
    kind: str  # "heading" | "para" | "anchor" (an id the caller asked to be told of)
    level: int  # heading level 1-6; 0 otherwise
    text: str  # the words, whitespace collapsed; the id for an anchor


def localname(element) -> str | None:
    """The tag without namespace, lower case; None for comments and processing instructions."""
    if not isinstance(element.tag, str):
        return None
    return etree.QName(element).localname.lower()


def semantic_types(element) -> set[str]:
    """epub:type (XML or HTML-parsed) and ARIA role values of an element."""
    values = " ".join(filter(None, (element.get(f"{{{EPUB_NS}}}type"), element.get("epub:type"), element.get("role"))))
    return set(values.lower().split())


def is_hidden(element) -> bool:
    style = (element.get("style") or "").replace(" ", "").lower()
    return element.get("hidden") is not None or "display:none" in style or element.get("aria-hidden") == "true"


def is_note_marker(element, tag: str) -> bool:
    """A link to a note ("<a href='#n1'>1</a>") or a superscript holding one: the marker, not the story."""
    text = "".join(element.itertext())
    if not NOTE_MARKER.match(text):
        return False
    if tag == "a":
        return "#" in (element.get("href") or "")
    if tag == "sup":
        return any(localname(child) == "a" for child in element.iter()) or not re.search(r"[\w]", text)
    return False


class BlockWalker:
    """A document's body in reading order as Blocks; skipped parts keep their tail text.

    anchors: element ids to report as ("anchor", id) blocks where they occur (EPUB chapter starts).
    """

    def __init__(self, anchors=frozenset(), include_front_matter: bool = False):
        self.anchors = set(anchors)
        self.include_front_matter = include_front_matter
        self.blocks: list[Block] = []
        self.found: set[str] = set()  # anchors met
        self.skipped_front_matter = False  # a part left out as front matter (the caller may name it)
        self._buffer: list[str] = []
        self._heading = 0  # level of the heading being read, 0 in body text

    def walk(self, root) -> list[Block]:
        self._visit(root)
        self._flush()
        return self.blocks

    def _text(self, text: str | None) -> None:
        if text:
            self._buffer.append(text)

    def _flush(self) -> None:
        text = " ".join(tidy_text("".join(self._buffer)).split())
        self._buffer = []
        if text and HAS_WORD.search(text):
            self.blocks.append(Block("heading", self._heading, text) if self._heading else Block("para", 0, text))

    def _skipped(self, element, tag: str) -> bool:
        if tag in SILENT_TAGS or is_hidden(element):
            return True
        types = semantic_types(element)
        if types & NEVER_READ:
            return True
        if types & FRONT_MATTER and not self.include_front_matter:
            self.skipped_front_matter = True
            return True
        if tag == "nav" and not types & FRONT_MATTER:
            return True  # menus and landmarks; a table of contents counts as front matter above
        return tag in ("a", "sup") and is_note_marker(element, tag)

    def _visit(self, element) -> None:
        tag = localname(element)
        if tag is None:  # a comment: only its tail is text
            self._text(element.tail)
            return
        anchor = element.get("id")
        if anchor in self.anchors and anchor not in self.found:
            self._flush()
            self.found.add(anchor)
            self.blocks.append(Block("anchor", 0, anchor))
        if self._skipped(element, tag):
            self._text(element.tail)
            return
        if tag == "br":
            self._text(" ")
        elif tag in HEADINGS and not self._heading:
            self._flush()
            self._heading = HEADINGS[tag]
            self._children(element)
            self._flush()
            self._heading = 0
        elif tag in BLOCKS:
            self._flush()
            self._children(element)
            self._flush()
        elif tag in CELLS:
            if "".join(self._buffer).strip():
                self._buffer[-1] = self._buffer[-1].rstrip()
                self._text(", ")
            self._children(element)
        else:
            self._children(element)
        self._text(element.tail)

    def _children(self, element) -> None:
        self._text(element.text)
        for child in element:
            self._visit(child)


def body_of(root):
    """The <body> element (any namespace), else the root."""
    for element in root.iter():
        if localname(element) == "body":
            return element
    return root


# ---------------------------------------------------------------------------------------------
# The .html reader: h1/h2 open chapters, a lone h1 at the top names the book (as in markdown).


def read(path: Path, options: ReadOptions) -> Book:
    from lxml import html

    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read manuscript {path}: {error.strerror or error}") from None
    if b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"manuscript looks binary (it contains NUL bytes), not HTML: {path}")
    if not raw.strip():
        raise UserError(f"manuscript is empty: no text to read in '{path.stem}'")
    if path.suffix.lower() == ".xhtml":
        from tutortoietts.readers.safety import parse_xml

        root = parse_xml(raw, path.name, path.name, recover=True).getroot()
    else:
        parser = html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True)
        source = raw
        try:
            # Decoded here: libxml2 guesses Latin-1 for UTF-8 bytes that carry no <meta charset>.
            source = raw.decode(options.encoding or "utf-8-sig")
            source = re.sub(r"^\s*<\?xml[^>]*\?>", "", source)  # lxml refuses a str that declares an encoding
        except (UnicodeDecodeError, LookupError):
            pass  # bytes: lxml follows the page's own <meta charset>
        try:
            root = html.document_fromstring(source, parser=parser)
        except (etree.ParserError, ValueError) as error:
            raise UserError(f"{path.name} cannot be read as HTML ({error})") from None
    blocks = BlockWalker(include_front_matter=options.include_front_matter).walk(body_of(root))
    tuples = [
        ("heading", block.level, block.text) if block.kind == "heading" and block.level <= 2
        else ("para", 0, block.text)
        for block in blocks if block.kind != "anchor"
    ]  # fmt: skip
    head_title = next((" ".join("".join(e.itertext()).split()) for e in root.iter() if localname(e) == "title"), "")
    title, tuples = take_book_title(tuples, head_title or path.stem)
    chapters = group_chapters(tuples)
    if not chapters:
        raise UserError(f"manuscript is empty: no text to read in '{path.name}'")
    return Book(title=title, chapters=tuple(chapters), metadata=html_metadata(root))


def html_metadata(root) -> Metadata:
    metas = {}
    for element in root.iter():
        if localname(element) == "meta" and element.get("name") and element.get("content"):
            metas.setdefault(element.get("name").lower(), " ".join(element.get("content").split()))
    language = root.get("lang") or root.get("{http://www.w3.org/XML/1998/namespace}lang") or ""
    authors = tuple(filter(None, (name.strip() for name in re.split(r";|\band\b", metas.get("author", "")))))
    return Metadata(authors=authors, language=language.strip(), description=metas.get("description", ""),
                    date=metas.get("date", ""), publisher=metas.get("publisher", ""))
