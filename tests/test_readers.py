"""The format readers behind read_book: HTML, DOCX and PDF made in the tests, and the dispatcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, read_book
from tutortoietts.readers import READERS, reader_for

HTML = """<!DOCTYPE html><html lang="en-GB"><head><meta charset="utf-8"><title>Web Book</title>
<meta name="author" content="Hal Html"><meta name="description" content="Pages about rain."></head>
<body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Web Book</h1>
<h2>First Steps</h2><p>Caf\u00e9 text<sup><a href="#fn1">1</a></sup> here.</p>
<ul><li>One item</li><li>Two item</li></ul><blockquote><p>A quoted line.</p></blockquote>
<table><tr><th>Name</th><td>Value</td></tr></table><img src="x.png" alt="A diagram of rain">
<h3>A minor heading</h3><p>Still the first chapter.</p>
<h2>Second Steps</h2><p>More&nbsp;text.</p><script>var hidden = "never read";</script>
<section role="doc-endnotes"><p id="fn1">The footnote itself.</p></section></body></html>"""


def test_every_suffix_has_a_reader_and_unknown_ones_are_one_line(tmp_path):
    assert {module for module in READERS.values()} == {"text", "epub", "html", "docx", "pdf"}
    for suffix in READERS:
        assert callable(reader_for(Path(f"book{suffix}")))
    with pytest.raises(UserError, match=r"unsupported manuscript type '\.odt': use one of .*\.epub"):
        reader_for(Path("book.odt"))


def test_html_headings_open_chapters(tmp_path):
    path = tmp_path / "web.html"
    path.write_text(HTML, encoding="utf-8")
    book = read_book(path)
    print(f"[readers] html: {book}")
    assert book.title == "Web Book"
    assert [(c.title, c.paragraphs) for c in book.chapters] == [
        ("First Steps", ("Caf\u00e9 text here.", "One item", "Two item", "A quoted line.", "Name, Value",
                         "A minor heading", "Still the first chapter.")),
        ("Second Steps", ("More text.",)),
    ]
    assert book.metadata.authors == ("Hal Html",) and book.metadata.language == "en-GB"
    assert book.metadata.description == "Pages about rain."


def test_xhtml_is_parsed_safely(tmp_path):
    path = tmp_path / "page.xhtml"
    path.write_bytes(b"<?xml version='1.0'?><!DOCTYPE html [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                     b"<html xmlns='http://www.w3.org/1999/xhtml'><body><p>&x;</p></body></html>")
    with pytest.raises(UserError, match="declares XML entities"):
        read_book(path)


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_paragraph("My Word Book", style="Title")
    document.add_heading("Chapter One", level=1)
    document.add_paragraph("It began in Word.")
    document.add_paragraph("A list item", style="List Bullet")
    document.add_heading("A Sub Heading", level=3)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "left", "right"
    document.add_heading("Chapter Two", level=2)
    document.add_paragraph("The end.")
    document.core_properties.author = "Wendy Writer"
    document.core_properties.language = "en-GB"
    document.save(str(path))
    return path


def test_docx_heading_styles_open_chapters(tmp_path):
    book = read_book(make_docx(tmp_path / "word.docx"))
    print(f"[readers] docx: {book}")
    assert book.title == "My Word Book"
    assert [(c.title, c.paragraphs) for c in book.chapters] == [
        ("Chapter One", ("It began in Word.", "A list item", "A Sub Heading", "left, right")),
        ("Chapter Two", ("The end.",)),
    ]
    assert book.metadata.authors == ("Wendy Writer",) and book.metadata.language == "en-GB"


def make_pdf(path: Path, pages: list[list[str]], outline=(), title="A PDF Book") -> Path:
    """A PDF with a real text layer (Helvetica text operators), pages of lines, an optional outline."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                                                NameObject("/BaseFont"): NameObject("/Helvetica")}))
    for lines in pages:
        page = writer.add_blank_page(width=612, height=792)
        operators = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        operators += [f"({line.replace('(', '[').replace(')', ']')}) Tj T*" for line in lines]
        stream = DecodedStreamObject()
        stream.set_data("\n".join([*operators, "ET"]).encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    for text, number in outline:
        writer.add_outline_item(title=text, page_number=number)
    writer.add_metadata({"/Title": title, "/Author": "Pat Pdf"})
    with open(path, "wb") as file:
        writer.write(file)
    return path


def test_pdf_text_layer_and_outline_chapters(tmp_path):
    pages = [
        ["Chapter One", "It was a long line of text that runs on for quite a while", "and then it ends here.", "1"],
        ["More of chapter one, on its second page.", "Chapter Two", "The second chapter starts mid page.", "2"],
        ["The last page of chapter two.", "3"],
    ]
    book = read_book(make_pdf(tmp_path / "book.pdf", pages, outline=[("Chapter One", 0), ("Chapter Two", 1)]))
    print(f"[readers] pdf: {book}")
    assert book.title == "A PDF Book" and book.metadata.authors == ("Pat Pdf",)
    assert [c.title for c in book.chapters] == ["Chapter One", "Chapter Two"]
    one, two = (" ".join(c.paragraphs) for c in book.chapters)
    assert one == "It was a long line of text that runs on for quite a while and then it ends here. More of chapter one, on its second page."
    assert two == "The second chapter starts mid page. The last page of chapter two."  # page numbers not read


def test_pdf_without_outline_is_one_chapter(tmp_path):
    book = read_book(make_pdf(tmp_path / "plain.pdf", [["Just one page of text."]]))
    assert book == Book(title="A PDF Book", chapters=book.chapters, metadata=book.metadata) and len(book.chapters) == 1


def test_scanned_pdf_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match=r"scan\.pdf has no text layer \(a scanned PDF\?\): run OCR"):
        read_book(make_pdf(tmp_path / "scan.pdf", [[], []]))


@pytest.mark.parametrize("suffix", [".pdf", ".docx"])
def test_damaged_documents_are_one_line(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a document at all")
    with pytest.raises(UserError) as error:
        read_book(path)
    print(f"[readers] {suffix}: {error.value}")
    assert "broken" in str(error.value) and "\n" not in str(error.value)
