"""Plain text and markdown manuscripts: bytes decoded (UTF-8, UTF-16 or --encoding), then parsed."""

from __future__ import annotations

from pathlib import Path

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, ReadOptions, parse_text

KINDS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md"}


def read(path: Path, options: ReadOptions) -> Book:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read manuscript {path}: {error.strerror or error}") from None
    text = decode_text(raw, path) if options.encoding is None else decode_with(raw, path, options.encoding)
    return parse_text(text, KINDS[path.suffix.lower()], fallback_title=path.stem)


def decode_text(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is not a manuscript."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise UserError(f"manuscript is not valid UTF-16 text: {path}") from None
    if b"\x00" in raw:
        raise UserError(f"manuscript looks binary (it contains NUL bytes), not text: {path}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(
            f"manuscript is not UTF-8 text (undecodable byte at offset {error.start}): {path}; re-save it as UTF-8 or name its encoding with --encoding (e.g. cp1252)"
        ) from None


def decode_with(raw: bytes, path: Path, encoding: str) -> str:
    """The manuscript in the encoding the user named: an unknown name or an undecodable byte is one line."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown --encoding {encoding!r}: use a Python codec name such as utf-8, cp1252 or latin-1") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise UserError(f"manuscript is not {encoding} text (undecodable byte at offset {error.start}): {path}") from None
    if "\x00" in text:
        raise UserError(f"manuscript looks binary (it contains NUL characters), not text: {path}")
    return text.removeprefix("\ufeff")
