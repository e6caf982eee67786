"""EPUBs built for the tests with ebooklib: EPUB 3 and 2, notes, cover, series, nested or missing navigation."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ebooklib import epub

XHTML = ("<html xmlns='http://www.w3.org/1999/xhtml' xmlns:epub='http://www.idpf.org/2007/ops'>"
         "<head><title>{title}</title></head><body>{body}</body></html>")


def cover_image(size=(60, 90), fmt="PNG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (180, 40, 40)).save(out, fmt)
    return out.getvalue()


def page(file_name: str, title: str, body: str) -> epub.EpubHtml:
    item = epub.EpubHtml(title=title, file_name=file_name, lang="en")
    item.content = XHTML.format(title=title, body=body)
    return item


CHAPTER_ONE = (
    "<h1>Chapter 1</h1><p>It was a dark night.<a epub:type='noteref' href='notes.xhtml#n1'>1</a> The rain fell"
    "<sup><a href='notes.xhtml#n2'>2</a></sup> on the roof.</p>"
    "<span epub:type='pagebreak' id='page7' title='7'>7</span>"
    "<ul><li>Bread and salt</li><li>A lantern</li></ul>"
    "<blockquote><p>Never go out in the rain, she said.</p></blockquote>"
    "<img src='cover.png' alt='A painting of rain'/>"
    "<h2 id='second'>The Second Part</h2><p>The second part begins here.</p>"
)
CHAPTER_TWO = (
    "<h1>Chapter 2</h1><p>The morning came at last.</p>"
    "<aside epub:type='footnote' id='fn9'><p>An aside that is a footnote.</p></aside>"
)
NOTES = "<section epub:type='endnotes'><h1>Notes</h1><ol><li id='n1'>Endnote one.</li><li id='n2'>Endnote two.</li></ol></section>"
COPYRIGHT = "<section epub:type='copyright-page'><p>Copyright 2019 by Ann Author. All rights reserved.</p></section>"


def build_epub(path: Path, version: int = 3, nav: bool = True, cover: bytes | None = None, series: bool = True,
               nested: bool = True, extra_pages=(), front_only: bool = False) -> Path:
    """A small book: copyright page, Part One > (Chapter 1 > its second part, Chapter 2), notes.

    version 2: NCX and guide only, calibre series, opf:role; version 3: nav document, landmarks,
    belongs-to-collection. nav=False: no navigation at all (spine and first headings).
    """
    book = epub.EpubBook()
    book.set_identifier("urn:isbn:9780306406157")
    book.set_title("The Rain Book")
    book.set_language("en")
    book.add_author("Ann Author", uid="author")
    book.add_metadata("DC", "publisher", "Lantern Press")
    book.add_metadata("DC", "date", "2019-05-02")
    book.add_metadata("DC", "description", "A <b>short</b> book about rain.")
    if series and version == 3:
        book.add_metadata(None, "meta", "Weather Tales", {"property": "belongs-to-collection", "id": "series"})
        book.add_metadata(None, "meta", "series", {"refines": "#series", "property": "collection-type"})
        book.add_metadata(None, "meta", "2", {"refines": "#series", "property": "group-position"})
    if series and version == 2:
        book.add_metadata(None, "meta", "", {"name": "calibre:series", "content": "Weather Tales"})
        book.add_metadata(None, "meta", "", {"name": "calibre:series_index", "content": "2.0"})
    if cover is not None:
        book.set_cover("cover.png", cover)
    copyright_page = page("copyright.xhtml", "Copyright", COPYRIGHT)
    part = page("part1.xhtml", "Part One", "<h1>Part One</h1>")
    one = page("chapter1.xhtml", "Chapter 1", CHAPTER_ONE)
    two = page("chapter2.xhtml", "Chapter 2", CHAPTER_TWO)
    notes = page("notes.xhtml", "Notes", NOTES)
    story = [] if front_only else [part, one, two]
    documents = [copyright_page, *story, *extra_pages, notes]
    for item in documents:
        book.add_item(item)
    if front_only:
        book.toc = [epub.Link("copyright.xhtml", "Copyright", "copyright"), epub.Link("notes.xhtml", "Notes", "notes")]
    elif nested:
        book.toc = [
            epub.Link("copyright.xhtml", "Copyright", "copyright"),
            (epub.Section("Part One", "part1.xhtml"), [
                epub.Link("chapter1.xhtml", "Chapter 1", "one"),
                epub.Link("chapter1.xhtml#second", "The Second Part", "second"),
                epub.Link("chapter2.xhtml", "Chapter 2", "two"),
            ]),
            epub.Link("notes.xhtml", "Notes", "notes"),
        ]
    else:
        book.toc = [epub.Link("chapter1.xhtml", "Chapter 1", "one"), epub.Link("chapter2.xhtml", "Chapter 2", "two")]
    book.guide = [{"type": "copyright-page", "href": "copyright.xhtml", "title": "Copyright"}]
    spine = (["cover"] if cover is not None else []) + documents
    if nav and version == 3:
        book.add_item(epub.EpubNcx())
        book.add_item(epub.EpubNav())
        spine.insert(1 if cover is not None else 0, "nav")
    elif nav:
        book.add_item(epub.EpubNcx())
    book.spine = spine
    epub.write_epub(str(path), book, {"epub3_landmark": version == 3, "epub2_guide": True})
    if version == 2:
        rewrite_entry(path, "EPUB/content.opf", lambda xml: xml.replace(b'version="3.0"', b'version="2.0"'))
    return path


def rewrite_entry(path: Path, name: str, change) -> None:
    """The archive again with one entry's bytes changed (a test's way to damage or downgrade a book)."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in entries:
            target.writestr(info, change(data) if info.filename == name else data)


def add_entry(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
