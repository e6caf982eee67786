"""EPUBs built for the tests with ebooklib: EPUB 3 and 2, notes, cover, series, nested or missing navigation,
and the same book damaged in each way the bad-input list names."""

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


# ---------------------------------------------------------------------------------------------
# Bad books: each case damages the test book one way; the second item is the words its error line holds.


def drm(path: Path) -> None:
    add_entry(path, "META-INF/encryption.xml", (
        b"<encryption xmlns='urn:oasis:names:tc:opendocument:xmlns:container' xmlns:enc='http://www.w3.org/2001/04/xmlenc#'>"
        b"<enc:EncryptedData><enc:EncryptionMethod Algorithm='http://www.w3.org/2001/04/xmlenc#aes128-cbc'/>"
        b"<enc:CipherData><enc:CipherReference URI='EPUB/chapter1.xhtml'/></enc:CipherData></enc:EncryptedData></encryption>"))


def font_obfuscation(path: Path) -> None:
    add_entry(path, "META-INF/encryption.xml", (
        b"<encryption xmlns='urn:oasis:names:tc:opendocument:xmlns:container' xmlns:enc='http://www.w3.org/2001/04/xmlenc#'>"
        b"<enc:EncryptedData><enc:EncryptionMethod Algorithm='http://www.idpf.org/2008/embedding'/>"
        b"<enc:CipherData><enc:CipherReference URI='EPUB/fonts/serif.otf'/></enc:CipherData></enc:EncryptedData></encryption>"))


XXE = b"<?xml version='1.0'?><!DOCTYPE html [<!ENTITY secret SYSTEM 'file:///etc/passwd'>]>"
BOMB = (b"<?xml version='1.0'?><!DOCTYPE html [<!ENTITY a 'aaaaaaaaaa'>" + b"".join(
    f"<!ENTITY {chr(98 + i)} '{('&' + chr(97 + i) + ';') * 10}'>".encode() for i in range(9)) + b"]>")


def with_doctype(doctype: bytes, reference: bytes):
    def change(xml: bytes) -> bytes:
        body = xml.split(b"?>", 1)[1] if xml.startswith(b"<?xml") else xml
        return doctype + body.replace(b"The morning came at last.", reference)
    return change


def huge_cover(path: Path) -> None:
    rewrite_entry(path, "EPUB/cover.png", lambda _: cover_image((9000, 9000)))


def remove_container(path: Path) -> None:
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist() if info.filename != "META-INF/container.xml"]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in entries:
            target.writestr(info, data)


BAD_EPUBS = {
    "drm": (drm, "is DRM-protected: META-INF/encryption.xml encrypts 1 content file(s) (e.g. EPUB/chapter1.xhtml)"),
    "not-a-zip": (lambda p: p.write_bytes(b"%PDF-1.4 this is no zip"), "is not a valid EPUB (not a zip archive, or a damaged one)"),
    "truncated-zip": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is not a valid EPUB (not a zip archive, or a damaged one)"),
    "missing-opf": (lambda p: rewrite_entry(p, "META-INF/container.xml", lambda x: x.replace(b"content.opf", b"gone.opf")),
                    "is not a valid EPUB: its OPF package file EPUB/gone.opf is missing"),
    "external-entity": (lambda p: rewrite_entry(p, "EPUB/chapter2.xhtml", with_doctype(XXE, b"&secret;")), "declares XML entities"),
    "entity-bomb": (lambda p: rewrite_entry(p, "EPUB/chapter2.xhtml", with_doctype(BOMB, b"&j;")), "declares XML entities"),
    "dotdot-entry": (lambda p: add_entry(p, "../../evil.sh", b"rm -rf /"), "holds an unsafe file name '../../evil.sh'"),
    "absolute-entry": (lambda p: add_entry(p, "/etc/cron.d/evil", b"* * * * * root true"), "holds an unsafe file name '/etc/cron.d/evil'"),
    "enormous-cover": (huge_cover, "is enormous (9000 x 9000 pixels)"),
    "missing-container": (remove_container, "is not a valid EPUB: META-INF/container.xml is missing"),
    "all-front-matter": (lambda p: build_epub(p, version=3, front_only=True), "has nothing to read but front and back matter"),
}




def bad_epub(folder: Path, case: str) -> Path:
    """The test book with one thing wrong, by case name."""
    damage, _ = BAD_EPUBS[case]
    path = build_epub(folder / f"{case}.epub", version=3, cover=cover_image())
    damage(path)
    return path
