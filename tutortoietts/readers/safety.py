"""Untrusted containers made safe to read: zip entries checked, XML parsed without entities, images sized."""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from pathlib import Path

from lxml import etree

from tutortoietts.errors import UserError

# A whole book, images included, is tens of megabytes; the readers keep every entry in memory.
MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 1 << 30  # uncompressed, all entries together
MAX_ENTRY_BYTES = 256 << 20
# Text and XML compress 3-10x; a few-KB entry that unpacks to hundreds of MB is a zip bomb.
MAX_RATIO = 200
RATIO_FLOOR_BYTES = 10 << 20  # small entries may compress as they like
# A cover is a few megapixels; this is 8,000 x 8,000 (under Pillow's own bomb warning). Past it (or past the bytes) it is no cover.
MAX_COVER_PIXELS = 64_000_000
MAX_COVER_BYTES = 50 << 20
COVER_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}  # what m4b and mp3 players show as they are

XML_SUFFIXES = (".xml", ".opf", ".ncx", ".xhtml", ".html", ".htm", ".svg", ".smil", ".xht")
ENTITY_DECLARATION = re.compile(rb"<!ENTITY", re.IGNORECASE)


def open_zip(path: Path, kind: str) -> zipfile.ZipFile:
    """The archive, once every entry is known safe to read into memory: names, sizes, ratios.

    Nothing is ever extracted to disk; a name that would escape a folder (../, /abs, C:) is refused
    all the same, since no honest book has one.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UserError(f"{path.name} is not a valid {kind} (not a zip archive, or a damaged one)") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        check_entries(archive, path, kind)
    except BaseException:
        archive.close()
        raise
    return archive


def check_entries(archive: zipfile.ZipFile, path: Path, kind: str) -> None:
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        raise UserError(f"{path.name} holds {len(entries)} files, more than a {kind} has ({MAX_ENTRIES} at most): refused")
    total = 0
    for entry in entries:
        if unsafe_name(entry.filename):
            raise UserError(f"{path.name} holds an unsafe file name {entry.filename!r} (a path out of the archive): refused")
        if entry.flag_bits & 0x1:
            raise UserError(f"{path.name} is password-protected (zip encryption on {entry.filename}): use an unprotected copy")
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > MAX_ENTRY_BYTES or (entry.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO):
            raise UserError(
                f"{path.name}: {entry.filename} unpacks to {entry.file_size / 2**20:.0f} MB "
                f"({ratio:.0f}x its packed size): refused as a zip bomb"
            )
        total += entry.file_size
    if total > MAX_TOTAL_BYTES:
        raise UserError(f"{path.name} unpacks to {total / 2**30:.1f} GB, more than a {kind} holds: refused as a zip bomb")


def unsafe_name(name: str) -> bool:
    """An absolute path, a drive letter, or a .. step (with either slash)."""
    plain = name.replace("\\", "/")
    if plain.startswith("/") or re.match(r"^[A-Za-z]:", plain):
        return True
    return ".." in plain.split("/")


def read_entry(archive: zipfile.ZipFile, name: str, path: Path, kind: str) -> bytes:
    """One entry's bytes; a missing entry or a failed checksum is one line."""
    try:
        return archive.read(name)
    except KeyError:
        raise UserError(f"{path.name} is not a valid {kind}: {name} is missing") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as error:
        raise UserError(f"{path.name} is damaged: {name} cannot be unpacked ({error})") from None


def entry_names(archive: zipfile.ZipFile) -> set[str]:
    return {posixpath.normpath(entry.filename) for entry in archive.infolist()}


# ---------------------------------------------------------------------------------------------
# XML


def xml_parser(recover: bool = False) -> etree.XMLParser:
    """No entity is ever expanded, no DTD loaded, nothing fetched, no huge-tree limits lifted."""
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False,
                           recover=recover, remove_comments=True, remove_pis=True)


def refuse_entities(data: bytes, name: str, source: str) -> None:
    """XML that declares entities is refused: external ones could read files, nested ones explode."""
    if ENTITY_DECLARATION.search(data):
        raise UserError(f"{source}: {name} declares XML entities (<!ENTITY>): refused, they can read files or expand without end")


def parse_xml(data: bytes, name: str, source: str, recover: bool = False) -> etree._ElementTree:
    """A safe parse of one XML document; entity declarations are refused, broken XML is one line."""
    refuse_entities(data, name, source)
    try:
        tree = etree.parse(io.BytesIO(data), xml_parser(recover))
    except etree.XMLSyntaxError as error:
        raise UserError(f"{source}: {name} is not well-formed XML ({error.msg or error})") from None
    if tree.getroot() is None:
        raise UserError(f"{source}: {name} is empty or not XML")
    dtd = tree.docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise UserError(f"{source}: {name} declares XML entities: refused, they can read files or expand without end")
    return tree


# ---------------------------------------------------------------------------------------------
# Images


def check_cover(data: bytes, where: str, strict: bool = True):
    """(data, media type, width, height) of a cover, converted to PNG when it is not JPEG or PNG.

    An enormous image is one line. One that is no image is one line too when strict (the user's
    --cover), else None (a book's broken cover is left out, not the book).
    """
    from PIL import Image

    if len(data) > MAX_COVER_BYTES:
        raise UserError(f"{where} is enormous ({len(data) / 2**20:.0f} MB); use an image under {MAX_COVER_BYTES >> 20} MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_COVER_PIXELS:
                raise UserError(f"{where} is enormous ({width} x {height} pixels); use one under 64 megapixels")
            kind = COVER_TYPES.get(image.format or "")
            if kind is not None:
                return data, kind, width, height
            image.load()
            out = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, "PNG")
            return out.getvalue(), "image/png", width, height
    except Image.DecompressionBombError:
        raise UserError(f"{where} is enormous (a decompression bomb); use an image under 64 megapixels") from None
    except (OSError, ValueError, SyntaxError) as error:
        if not strict:
            return None
        raise UserError(f"{where} cannot be read as an image ({error})") from None
