"""Tags and cover for every output (mutagen): m4b/m4a atoms, MP3 ID3 frames, and the synthetic-narration note."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Cover

GENRE = "Audiobook"
# Retail platforms' rules on AI narration differ, so every file says it plainly.
SYNTHETIC_NOTE = "Narrated by a synthetic voice (text-to-speech: tutortoietts with the Tortoise TTS models), not by a human narrator."
FREEFORM = "----:com.apple.iTunes:"  # iTunes' namespace for tags MP4 has no atom for


@dataclass(frozen=True)
class BookTags:
    """What every file of one book is tagged with; chapter files add their own title and track."""

    title: str
    authors: tuple[str, ...] = ()
    narrator: str = ""
    year: str = ""
    description: str = ""
    series: str = ""
    series_index: str = ""
    language: str = ""  # BCP 47 as the book gives it
    publisher: str = ""
    isbn: str = ""
    cover: Cover | None = None
    comment: str = SYNTHETIC_NOTE

    @property
    def artist(self) -> str:
        return "; ".join(self.authors)

    @property
    def language3(self) -> str:
        """ISO 639-2 (what ID3's TLAN and MP4's track language hold): "en-GB" -> "eng"; "" if unknown."""
        return language_alpha3(self.language)


def language_alpha3(tag: str) -> str:
    if not tag.strip():
        return ""
    import langcodes

    try:
        return langcodes.Language.get(tag.strip()).to_alpha3()
    except (LookupError, ValueError):  # not a language tag langcodes knows: leave the tag out
        return ""


def read_cover(path: Path) -> Cover:
    """--cover IMAGE: a JPEG or PNG (others are converted), not enormous."""
    from tutortoietts.readers.safety import check_cover

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--cover image not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read --cover {path}: {error.strerror or error}") from None
    data, media_type, width, height = check_cover(data, f"--cover {path.name}")
    return Cover(data, media_type, width, height)


def book_tags(book: Book, *, title: str | None = None, author: str | None = None, narrator: str | None = None,
              cover: Path | None = None, voice: str = "") -> BookTags:
    """The book's own metadata with the user's overrides on top (--title, --author, --narrator, --cover).

    Without --narrator the narrator tag names the voice as synthetic, so no player shows a person.
    """
    meta = book.metadata
    authors = (author,) if author else meta.authors
    narrator = narrator or (f"Synthetic voice ({voice})" if voice else "Synthetic voice")
    return BookTags(
        title=title or book.title, authors=tuple(authors), narrator=narrator, year=meta.year,
        description=meta.description, series=meta.series, series_index=meta.series_index, language=meta.language,
        publisher=meta.publisher, isbn=meta.isbn, cover=read_cover(cover) if cover else meta.cover,
    )


def write_tags(path: Path, tags: BookTags, title: str | None = None, track: tuple[int, int] | None = None) -> None:
    """Tag one encoded file in place by its container (the suffix may be a temporary one)."""
    with open(path, "rb") as file:
        head = file.read(12)
    if head[4:8] == b"ftyp":
        write_mp4(path, tags, title, track)
    elif head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):  # MPEG frame sync
        write_id3(path, tags, title, track)
    else:
        raise ValueError(f"{path}: neither MP4 nor MP3, cannot tag it")


def write_mp4(path: Path, tags: BookTags, title: str | None, track: tuple[int, int] | None) -> None:
    from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

    audio = MP4(str(path))
    if audio.tags is None:
        audio.add_tags()
    values = {
        "\xa9nam": title or tags.title, "\xa9alb": tags.title, "\xa9ART": tags.artist, "aART": tags.artist,
        "\xa9wrt": tags.narrator, "\xa9day": tags.year, "\xa9gen": GENRE, "\xa9cmt": tags.comment,
        "desc": tags.description[:255], "ldes": tags.description, "\xa9mvn": tags.series,
    }
    for key, value in values.items():
        if value:
            audio.tags[key] = [value]
    audio.tags["stik"] = [2]  # media kind: audiobook
    if track:
        audio.tags["trkn"] = [track]
    if tags.series_index.isdigit():
        audio.tags["\xa9mvi"] = [int(tags.series_index)]
    freeform = {"NARRATOR": tags.narrator, "SERIES": tags.series, "SERIES-PART": tags.series_index,
                "LANGUAGE": tags.language, "PUBLISHER": tags.publisher, "ISBN": tags.isbn, "SYNTHETIC_NARRATION": "yes"}
    for key, value in freeform.items():
        if value:
            audio.tags[FREEFORM + key] = [MP4FreeForm(value.encode("utf-8"))]
    if tags.cover is not None:
        kind = MP4Cover.FORMAT_PNG if tags.cover.media_type == "image/png" else MP4Cover.FORMAT_JPEG
        audio.tags["covr"] = [MP4Cover(tags.cover.data, imageformat=kind)]
    audio.save()


def chapter_ordered_id3():
    """mutagen's ID3, saving chapter frames in time order.

    mutagen sorts frames by size when it saves, so CHAP frames come out shuffled, and readers that
    take chapters in file order (ffmpeg 5, hence many players) list them shuffled. This keeps
    mutagen's frame encoding (save_frame) and only changes the order: text frames, chapters by
    start time, pictures last.
    """
    from mutagen import id3
    from mutagen.id3._tags import save_frame

    class ChapterOrderedID3(id3.ID3):
        def _write(self, config):
            frames = list(self.values())
            chapters = sorted((f for f in frames if f.FrameID == "CHAP"), key=lambda f: (f.start_time, f.element_id))
            others = [f for f in frames if f.FrameID not in ("CHAP", "APIC")]
            pictures = [f for f in frames if f.FrameID == "APIC"]
            data = [save_frame(frame, config=config) for frame in [*others, *chapters, *pictures]]
            if self._unknown_v2_version == config.v2_version:
                data.extend(raw for raw in self.unknown_frames if len(raw) > 10)
            return bytearray().join(data)

    return ChapterOrderedID3


def write_id3(path: Path, tags: BookTags, title: str | None, track: tuple[int, int] | None) -> None:
    """ID3v2.3 (what most players read); ffmpeg's chapter frames (CHAP, CTOC) are kept, in order."""
    from mutagen import id3

    try:
        frames = chapter_ordered_id3()(str(path))
    except id3.ID3NoHeaderError:
        frames = chapter_ordered_id3()()
    language = tags.language3 or "eng"  # COMM needs some language; "eng" is what players assume
    text = {
        id3.TIT2: title or tags.title, id3.TALB: tags.title, id3.TPE1: tags.artist, id3.TPE2: tags.artist,
        id3.TCOM: tags.narrator, id3.TDRC: tags.year, id3.TCON: GENRE, id3.TPUB: tags.publisher,
        id3.TLAN: tags.language3, id3.MVNM: tags.series,
    }
    for frame, value in text.items():
        frames.delall(frame.__name__)
        if value:
            frames.add(frame(encoding=3, text=[value]))
    if track:
        frames.setall("TRCK", [id3.TRCK(encoding=3, text=[f"{track[0]}/{track[1]}"])])
    if tags.series_index:
        frames.setall("MVIN", [id3.MVIN(encoding=3, text=[tags.series_index])])
    frames.delall("COMM")
    frames.add(id3.COMM(encoding=3, lang=language, desc="", text=[tags.comment]))
    extra = {"NARRATOR": tags.narrator, "SERIES": tags.series, "SERIES-PART": tags.series_index, "ISBN": tags.isbn,
             "DESCRIPTION": tags.description, "LANGUAGE": tags.language, "SYNTHETIC_NARRATION": "yes"}
    for key, value in extra.items():
        frames.delall(f"TXXX:{key}")
        if value:
            frames.add(id3.TXXX(encoding=3, desc=key, text=[value]))
    frames.delall("APIC")
    if tags.cover is not None:
        frames.add(id3.APIC(encoding=3, mime=tags.cover.media_type, type=id3.PictureType.COVER_FRONT, desc="Cover",
                            data=tags.cover.data))
    frames.save(str(path), v2_version=3)
