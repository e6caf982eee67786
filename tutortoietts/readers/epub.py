"""EPUB 2 and 3: chapters from the navigation in spine order, front matter left out, metadata and cover.

ebooklib opens the package (container, manifest, spine, guide); lxml, with entities off, reads the
navigation (EPUB 3 nav or EPUB 2 NCX, keeping the epub:type and landmarks ebooklib drops), the
metadata refinements (roles, series) and the documents' text.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Cover, Metadata, ReadOptions, group_chapters
from tutortoietts.readers import safety
from tutortoietts.readers.html import FRONT_MATTER, Block, BlockWalker, body_of, localname, semantic_types

NS = {
    "opf": "http://www.idpf.org/2007/opf",
    "dc": "http://purl.org/dc/elements/1.1/",
    "ncx": "http://www.daisy.org/z3986/2005/ncx/",
    "container": "urn:oasis:names:tc:opendocument:xmlns:container",
    "enc": "http://www.w3.org/2001/04/xmlenc#",
    "xhtml": "http://www.w3.org/1999/xhtml",
    "epub": "http://www.idpf.org/2007/ops",
}
HTML_TYPES = {"application/xhtml+xml", "text/html", "application/x-dtbook+xml"}
# Font obfuscation is not DRM: the text stays readable, only embedded fonts are scrambled.
FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}
FONT_SUFFIXES = (".otf", ".ttf", ".woff", ".woff2", ".eot", ".pfb", ".pfm")
NOTES_TYPES = {"footnotes", "endnotes", "rearnotes", "notes", "footnote", "endnote", "rearnote", "doc-endnotes"}
# EPUB 2 guide types that mark front/back matter (EPUB 3 landmarks use FRONT_MATTER's names).
GUIDE_FRONT = {"cover", "title-page", "toc", "copyright-page", "index", "loi", "lot", "colophon", "bibliography"}
# Titles and file names that say "not the story" when nothing else does.
FRONT_TITLE = re.compile(
    r"^(?:front |back )?cover(?: page| image)?$|^(?:half[- ]?)?title(?: page)?$|^copyright(?: page| notice)?$"
    r"|^(?:table of )?contents$|^toc$|^index$|^list of (?:figures|illustrations|tables|maps|plates)$|^colophon$"
    r"|^imprint$|^(?:also|other books) by\b|^about the publisher$|^landmarks$|^page list$",
    re.IGNORECASE,
)
NOTES_TITLE = re.compile(r"^(?:foot|end)?notes$|^notes (?:to|on) ", re.IGNORECASE)
FRONT_FILE = re.compile(r"^(?:cover|coverpage|titlepage|title[-_]page|halftitle|copyright|copy|toc|contents|nav|index|colophon)(?:[-_]?\d+)?$", re.IGNORECASE)
NOTES_FILE = re.compile(r"^(?:foot|end)?notes(?:[-_]?\d+)?$", re.IGNORECASE)


@dataclass
class NavEntry:
    title: str
    path: str  # the document's name in the zip
    fragment: str  # "" for the document's start
    depth: int  # 0 for top level


@dataclass
class Section:
    """A stretch of text between two chapter starts, and what it is."""

    title: str
    depth: int
    kind: str = "text"  # "text" | "front" | "notes"
    blocks: list[Block] = field(default_factory=list)
    source: str = ""  # document name, for messages


def read(path: Path, options: ReadOptions) -> Book:
    with safety.open_zip(path, "EPUB") as archive:
        names = safety.entry_names(archive)
        check_drm(archive, names, path)
        for info in archive.infolist():
            if info.filename.lower().endswith(safety.XML_SUFFIXES):
                safety.refuse_entities(safety.read_entry(archive, info.filename, path, "EPUB"), info.filename, path.name)
        opf_path = package_path(archive, names, path)
        safety.parse_xml(safety.read_entry(archive, opf_path, path, "EPUB"), opf_path, path.name, recover=True)
    reader, package = load_package(path)
    opf = reader.container.getroot()
    opf_dir = posixpath.dirname(opf_path)
    spine = spine_documents(package, opf_dir)
    if not spine:
        raise UserError(f"{path.name} is not a valid EPUB: its spine lists no text documents")
    entries = navigation(package, opf_dir, {doc for doc, _, _ in spine}, path)
    marks = landmarks(package, opf_dir, path)
    metadata = read_metadata(opf, package, opf_dir, path)
    title = first_text(opf, "dc:title") or path.stem
    sections = split_sections(spine, entries, marks, options, path, title)
    return assemble(sections, title, metadata, path, options.include_front_matter)


# ---------------------------------------------------------------------------------------------
# The container: DRM, package file, ebooklib


def check_drm(archive, names: set[str], path: Path) -> None:
    """encryption.xml naming any file but fonts means the text itself is encrypted: DRM."""
    if "META-INF/sinf.xml" in names:
        raise UserError(f"{path.name} is DRM-protected (Apple FairPlay, META-INF/sinf.xml): tutortoietts reads DRM-free EPUBs only")
    if "META-INF/encryption.xml" not in names:
        return
    data = safety.read_entry(archive, "META-INF/encryption.xml", path, "EPUB")
    tree = safety.parse_xml(data, "META-INF/encryption.xml", path.name, recover=True)
    encrypted = []
    for item in tree.iter(f"{{{NS['enc']}}}EncryptedData"):
        method = item.find(f"{{{NS['enc']}}}EncryptionMethod")
        algorithm = method.get("Algorithm", "") if method is not None else ""
        for reference in item.iter(f"{{{NS['enc']}}}CipherReference"):
            uri = unquote(reference.get("URI", ""))
            if algorithm in FONT_OBFUSCATION or uri.lower().endswith(FONT_SUFFIXES):
                continue
            encrypted.append(uri)
    if encrypted:
        raise UserError(
            f"{path.name} is DRM-protected: META-INF/encryption.xml encrypts {len(encrypted)} content file(s) "
            f"(e.g. {encrypted[0]}); tutortoietts reads DRM-free EPUBs only"
        )


def package_path(archive, names: set[str], path: Path) -> str:
    """The OPF package file that META-INF/container.xml names, known to exist."""
    if "META-INF/container.xml" not in names:
        raise UserError(f"{path.name} is not a valid EPUB: META-INF/container.xml is missing")
    data = safety.read_entry(archive, "META-INF/container.xml", path, "EPUB")
    container = safety.parse_xml(data, "META-INF/container.xml", path.name, recover=True)
    for rootfile in container.iter(f"{{{NS['container']}}}rootfile"):
        if rootfile.get("media-type") == "application/oebps-package+xml" and rootfile.get("full-path"):
            full = rootfile.get("full-path")
            if safety.unsafe_name(full):
                raise UserError(f"{path.name} names an unsafe package path {full!r}: refused")
            if posixpath.normpath(full) not in names:
                raise UserError(f"{path.name} is not a valid EPUB: its OPF package file {full} is missing")
            return posixpath.normpath(full)
    raise UserError(f"{path.name} is not a valid EPUB: META-INF/container.xml names no OPF package file")


def load_package(path: Path):
    """ebooklib's reader on the checked file; its own navigation parsing is skipped (we read it)."""
    import zipfile

    from ebooklib import epub

    class PackageReader(epub.EpubReader):
        def _parse_nav(self, data, base_path, navtype="toc"):
            pass  # read below with epub:type and landmarks, which ebooklib drops

        def _parse_ncx(self, data):
            pass

        def _load_spine(self):
            # The spine is read first; a spine toc="..." naming no NCX (common in books without
            # navigation) then fails ebooklib's NCX lookup, which we do not need: the spine stands.
            try:
                super()._load_spine()
            except (AttributeError, KeyError, epub.EpubException):
                if not getattr(self.book, "spine", None):
                    raise

    reader = PackageReader(str(path), {"ignore_ncx": True})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            package = reader.load()
    except UserError:
        raise
    except zipfile.BadZipFile as error:
        raise UserError(f"{path.name} is damaged: {error}") from None
    except KeyError as error:
        raise UserError(f"{path.name} is not a valid EPUB: a file its package names is missing ({error.args[0] if error.args else error})") from None
    except Exception as error:  # a malformed package trips ebooklib in many ways; each is the file's fault
        raise UserError(f"{path.name} cannot be read as an EPUB ({type(error).__name__}: {error})") from None
    return reader, package


def zip_name(base_dir: str, href: str) -> tuple[str, str]:
    """(document name in the zip, fragment) of an href relative to base_dir."""
    target, _, fragment = (href or "").partition("#")
    name = posixpath.normpath(posixpath.join(base_dir, unquote(target))) if target else ""
    return name, unquote(fragment)


def spine_documents(package, opf_dir: str) -> list[tuple[str, object, bool]]:
    """(zip name, item, linear) of each text document in reading order; a document listed twice once."""
    documents, seen = [], set()
    for idref, linear in package.spine:
        item = package.get_item_with_id(idref)
        if item is None or (item.media_type or "") not in HTML_TYPES:
            continue
        name = posixpath.normpath(posixpath.join(opf_dir, item.file_name))
        if name not in seen:
            seen.add(name)
            documents.append((name, item, (linear or "yes").lower() != "no"))
    return documents


# ---------------------------------------------------------------------------------------------
# Navigation: EPUB 3 nav first, else the EPUB 2 NCX; only entries that point into the spine count.


def navigation(package, opf_dir: str, spine_names: set[str], path: Path) -> list[NavEntry]:
    for item in package.get_items():
        if "nav" in (getattr(item, "properties", None) or []) or type(item).__name__ == "EpubNav":
            entries = nav_entries(item, opf_dir, path)
            entries = [entry for entry in entries if entry.path in spine_names]
            if entries:
                return entries
    for item in package.get_items():
        if item.media_type == "application/x-dtbncx+xml":
            entries = [entry for entry in ncx_entries(item, opf_dir, path) if entry.path in spine_names]
            if entries:
                return entries
    return []


def nav_document(item, opf_dir: str, path: Path):
    name = posixpath.normpath(posixpath.join(opf_dir, item.file_name))
    return name, safety.parse_xml(item.get_content(), name, path.name, recover=True).getroot()


def nav_entries(item, opf_dir: str, path: Path) -> list[NavEntry]:
    name, root = nav_document(item, opf_dir, path)
    toc = next((nav for nav in root.iter() if localname(nav) == "nav" and "toc" in semantic_types(nav)), None)
    if toc is None:
        return []
    entries: list[NavEntry] = []

    def walk_list(list_element, depth: int) -> None:
        for li in list_element:
            if localname(li) != "li":
                continue
            label = next((child for child in li if localname(child) in ("a", "span")), None)
            if label is not None:
                title = " ".join("".join(label.itertext()).split())
                target, fragment = zip_name(posixpath.dirname(name), label.get("href", "")) if localname(label) == "a" else ("", "")
                entries.append(NavEntry(title, target, fragment, depth))
            for child in li:
                if localname(child) in ("ol", "ul"):
                    walk_list(child, depth + 1)

    for child in toc:
        if localname(child) in ("ol", "ul"):
            walk_list(child, 0)
    return entries


def ncx_entries(item, opf_dir: str, path: Path) -> list[NavEntry]:
    name = posixpath.normpath(posixpath.join(opf_dir, item.file_name))
    root = safety.parse_xml(item.get_content(), name, path.name, recover=True).getroot()
    entries: list[NavEntry] = []

    def walk_points(parent, depth: int) -> None:
        for point in parent:
            if localname(point) != "navpoint":
                continue
            label = point.find("ncx:navLabel/ncx:text", NS)
            content = point.find("ncx:content", NS)
            title = " ".join("".join(label.itertext()).split()) if label is not None else ""
            target, fragment = zip_name(posixpath.dirname(name), content.get("src", "") if content is not None else "")
            entries.append(NavEntry(title, target, fragment, depth))
            walk_points(point, depth + 1)

    nav_map = root.find("ncx:navMap", NS)
    if nav_map is not None:
        walk_points(nav_map, 0)
    return entries


def landmarks(package, opf_dir: str, path: Path) -> dict[tuple[str, str], str]:
    """(document, fragment) -> "front" | "notes", from EPUB 3 landmarks and the EPUB 2 guide."""
    marks: dict[tuple[str, str], str] = {}
    for item in package.get_items():
        if "nav" in (getattr(item, "properties", None) or []) or type(item).__name__ == "EpubNav":
            name, root = nav_document(item, opf_dir, path)
            for nav in root.iter():
                if localname(nav) == "nav" and "landmarks" in semantic_types(nav):
                    for link in nav.iter():
                        if localname(link) == "a":
                            kind = matter_kind(semantic_types(link))
                            if kind:
                                marks[zip_name(posixpath.dirname(name), link.get("href", ""))] = kind
    for reference in getattr(package, "guide", []) or []:
        kind = reference.get("type", "") or ""
        kind = "notes" if kind.lower() == "notes" else "front" if kind.lower() in GUIDE_FRONT else ""
        if kind:
            marks.setdefault(zip_name(opf_dir, reference.get("href", "")), kind)
    return marks


def matter_kind(types: set[str]) -> str:
    if types & NOTES_TYPES:
        return "notes"
    return "front" if types & FRONT_MATTER else ""


# ---------------------------------------------------------------------------------------------
# Sections: the spine's documents walked once, cut at each navigation entry


def split_sections(spine, entries: list[NavEntry], marks, options: ReadOptions, path: Path, book_title: str) -> list[Section]:
    """Every spine document walked once; a navigation entry starts a section where its anchor is."""
    by_document: dict[str, list[NavEntry]] = {}
    for entry in entries:
        by_document.setdefault(entry.path, []).append(entry)
    sections: list[Section] = []
    for name, item, linear in spine:
        root = safety.parse_xml(item.get_content(), name, path.name, recover=True).getroot()
        body = body_of(root)
        here = by_document.get(name, [])
        walker = BlockWalker(anchors={entry.fragment for entry in here if entry.fragment},
                             include_front_matter=options.include_front_matter)
        blocks = walker.walk(body)
        document_kind = marks.get((name, "")) or matter_kind(semantic_types(body)) or file_kind(name)
        if not linear and not document_kind:
            document_kind = "front"  # auxiliary content (pop-up notes, a cover page): not the reading order
        first = len(sections)
        at_start = [entry for entry in here if not entry.fragment or entry.fragment not in walker.found]
        if at_start:
            sections.extend(nav_section(entry, marks, name, document_kind) for entry in at_start)
        else:
            # No entry opens this document: it is a section of its own when marked as front matter
            # or notes, when it comes before any section or after front matter, or (without
            # navigation) when it has a heading; otherwise it continues the chapter before it (a
            # chapter split in two files).
            opening = blocks[: next((i for i, block in enumerate(blocks) if block.kind == "anchor"), len(blocks))]
            heading = next((block for block in opening if block.kind == "heading"), None)
            if document_kind or not sections or sections[-1].kind != "text" or (not entries and heading is not None):
                title = heading.text if heading is not None else ""
                kind = document_kind or title_kind(title)
                if not kind and entries and not sections and comparable(title) == comparable(book_title):
                    kind = "front"  # the title page, before the navigation's first entry
                sections.append(Section(title, 0, kind or "text", source=name))
                blocks = [block for block in blocks if block is not heading]
        by_anchor: dict[str, list[NavEntry]] = {}
        for entry in here:
            if entry.fragment in walker.found:
                by_anchor.setdefault(entry.fragment, []).append(entry)
        for block in blocks:
            if block.kind == "anchor":
                sections.extend(nav_section(entry, marks, name, "") for entry in by_anchor.get(block.text, []))
            else:
                sections[-1].blocks.append(block)
        if walker.skipped_front_matter:
            # A section whose document was front matter by its epub:type has nothing left to read:
            # it is front matter too, not an empty title to lend to the next chapter.
            for section in sections[max(first - 1, 0):]:
                if section.kind == "text" and not section.blocks:
                    section.kind = "front"
    return sections


def nav_section(entry: NavEntry, marks, name: str, document_kind: str) -> Section:
    kind = marks.get((name, entry.fragment)) or (document_kind if not entry.fragment else "") or title_kind(entry.title)
    return Section(entry.title, entry.depth, kind or "text", source=name)


def title_kind(title: str) -> str:
    title = " ".join(title.split()).strip(" .:")
    if NOTES_TITLE.match(title):
        return "notes"
    return "front" if FRONT_TITLE.match(title) else ""


def file_kind(name: str) -> str:
    stem = posixpath.splitext(posixpath.basename(name))[0]
    if NOTES_FILE.match(stem):
        return "notes"
    return "front" if FRONT_FILE.match(stem) else ""


def comparable(text: str) -> str:
    return "".join(char for char in text.casefold() if char.isalnum())


def section_paragraphs(section: Section) -> list[str]:
    """The section's text; its leading headings that repeat its title are not read twice."""
    blocks = list(section.blocks)
    title = comparable(section.title)
    while blocks and blocks[0].kind == "heading" and title and (
        comparable(blocks[0].text) in title or title in comparable(blocks[0].text)
    ):
        blocks.pop(0)
    return [block.text for block in blocks if block.kind in ("para", "heading")]


def assemble(sections: list[Section], title: str, metadata: Metadata, path: Path, include_front_matter: bool) -> Book:
    """Kept sections to chapters (a title with no text of its own joins the next one's); the rest named."""
    blocks, left_out = [], []
    for section in sections:
        paragraphs = section_paragraphs(section)
        if section.kind == "notes" or (section.kind == "front" and not include_front_matter):
            label = section.title or posixpath.basename(section.source)
            left_out.append(f"{label} ({'notes' if section.kind == 'notes' else 'front/back matter'})")
            continue
        blocks.append(("heading", 1, section.title))
        blocks.extend(("para", 0, paragraph) for paragraph in paragraphs)
    chapters = group_chapters(blocks)
    if not chapters:
        front = [label for label in left_out if label.endswith("(front/back matter)")]
        if front:
            names = ", ".join(label.rsplit(" (", 1)[0] for label in front[:4])
            raise UserError(
                f"{path.name} has nothing to read but front and back matter ({names}): "
                f"use --include-front-matter to read it"
            )
        raise UserError(f"manuscript is empty: no text to read in '{path.name}'")
    return Book(title=title, chapters=tuple(chapters), metadata=metadata, left_out=tuple(dict.fromkeys(left_out)))


# ---------------------------------------------------------------------------------------------
# Metadata


def first_text(opf, query: str) -> str:
    for element in opf.iterfind(f".//opf:metadata/{query}", NS):
        text = " ".join("".join(element.itertext()).split())
        if text:
            return text
    return ""


def refinements(opf) -> dict[str, dict[str, str]]:
    """EPUB 3 <meta refines="#id" property="p">value</meta>: id -> {property: value}."""
    refined: dict[str, dict[str, str]] = {}
    for meta in opf.iterfind(".//opf:metadata/opf:meta[@refines]", NS):
        target = meta.get("refines", "").lstrip("#")
        refined.setdefault(target, {}).setdefault(meta.get("property", ""), " ".join((meta.text or "").split()))
    return refined


def read_metadata(opf, package, opf_dir: str, path: Path) -> Metadata:
    refined = refinements(opf)
    authors, narrators = [], []
    for element in [*opf.iterfind(".//opf:metadata/dc:creator", NS), *opf.iterfind(".//opf:metadata/dc:contributor", NS)]:
        name = " ".join("".join(element.itertext()).split())
        if not name:
            continue
        role = element.get(f"{{{NS['opf']}}}role") or refined.get(element.get("id", ""), {}).get("role", "")
        role = role.lower()
        if role == "nrt":
            narrators.append(name)
        elif role == "aut" or (not role and localname(element) == "creator"):
            authors.append(name)
    metas = {meta.get("name", ""): meta.get("content", "") for meta in opf.iterfind(".//opf:metadata/opf:meta[@name]", NS)}
    series, series_index = metas.get("calibre:series", "").strip(), metas.get("calibre:series_index", "").strip()
    if not series:
        for meta in opf.iterfind(".//opf:metadata/opf:meta[@property='belongs-to-collection']", NS):
            details = refined.get(meta.get("id", ""), {})
            if details.get("collection-type", "series") in ("series", "set"):
                series, series_index = " ".join((meta.text or "").split()), details.get("group-position", "")
                break
    identifiers = [(element.get("id", ""), " ".join("".join(element.itertext()).split()),
                    element.get(f"{{{NS['opf']}}}scheme", "")) for element in opf.iterfind(".//opf:metadata/dc:identifier", NS)]
    unique = opf.get("unique-identifier", "")
    identifier = next((value for key, value, _ in identifiers if key == unique and value), identifiers[0][1] if identifiers else "")
    isbn = next((found for _, value, scheme in identifiers if (found := isbn_of(value, scheme))), "")
    return Metadata(
        authors=tuple(dict.fromkeys(authors)), narrators=tuple(dict.fromkeys(narrators)),
        language=first_text(opf, "dc:language"), publisher=first_text(opf, "dc:publisher"),
        date=first_text(opf, "dc:date"), identifier=identifier, isbn=isbn,
        description=plain_description(first_text(opf, "dc:description")), series=series,
        series_index=clean_index(series_index), cover=find_cover(opf, package, metas, opf_dir, path),
    )


def clean_index(value: str) -> str:
    """calibre writes "2.0" for the second book: "2"; "2.5" stays."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def isbn_of(value: str, scheme: str) -> str:
    """The ISBN-10/13 in an identifier ("urn:isbn:978...", scheme ISBN, or the bare digits), else ""."""
    text = re.sub(r"^(?:urn:)?isbn:?", "", value.strip(), flags=re.IGNORECASE)
    digits = re.sub(r"[\s-]", "", text).upper()
    if not (scheme.upper() == "ISBN" or text != value.strip() or re.fullmatch(r"97[89]\d{10}|\d{9}[\dX]", digits)):
        return ""
    if re.fullmatch(r"\d{13}", digits):
        total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(digits))
        return digits if total % 10 == 0 else ""
    if re.fullmatch(r"\d{9}[\dX]", digits):
        total = sum((10 - i) * (10 if d == "X" else int(d)) for i, d in enumerate(digits))
        return digits if total % 11 == 0 else ""
    return ""


def plain_description(text: str) -> str:
    """Descriptions often carry escaped HTML: its words only."""
    if "<" not in text:
        return text
    from lxml import html

    try:
        return " ".join(html.fragment_fromstring(text, create_parent="div").text_content().split())
    except Exception:  # lxml's parser errors on fragments are many; the raw text is still a description
        return " ".join(re.sub(r"<[^<>]*>", " ", text).split())


def find_cover(opf, package, metas: dict, opf_dir: str, path: Path) -> Cover | None:
    """EPUB 3 cover-image property, else EPUB 2 <meta name="cover">, else an image named cover."""
    images = [item for item in package.get_items() if (item.media_type or "").startswith("image/")]
    chosen = None
    for element in opf.iterfind(".//opf:manifest/opf:item", NS):
        if "cover-image" in (element.get("properties") or "").split():
            chosen = package.get_item_with_id(element.get("id"))
            break
    if chosen is None and metas.get("cover"):
        chosen = package.get_item_with_id(metas["cover"]) or next(
            (item for item in images if item.file_name == metas["cover"]), None)
    if chosen is None:
        chosen = next((item for item in images if "cover" in f"{item.id or ''} {item.file_name}".lower()), None)
    if chosen is None or not (chosen.media_type or "").startswith("image/"):
        return None
    checked = safety.check_cover(chosen.get_content(), f"the cover image of {path.name} ({chosen.file_name})", strict=False)
    if checked is None:
        return None
    data, media_type, width, height = checked
    return Cover(data, media_type, width, height)
