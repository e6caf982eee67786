"""Tags and cover through mutagen: every field in m4a/m4b and mp3, read back, chapters kept in order."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.cli_support import ffmpeg_missing
from tests.epub_support import cover_image
from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Chapter, Cover, Metadata
from tutortoietts.stitch import write_encoded
from tutortoietts.tags import SYNTHETIC_NOTE, BookTags, book_tags, language_alpha3, read_cover, write_tags

pytestmark = pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")
RATE = 24000
TAGS = BookTags(title="The Rain Book", authors=("Ann Author", "Bo Writer"), narrator="Synthetic voice (emma)", year="2019",
                description="A short book about rain.", series="Weather Tales", series_index="2", language="en-GB",
                publisher="Lantern Press", isbn="9780306406157", cover=Cover(cover_image((30, 40), "JPEG"), "image/jpeg", 30, 40))
CHAPTERS = [("A rather long first chapter title", 0, 1000), ("Two", 1000, 2000), ("Chapter the third", 2000, 3000)]


def encoded(tmp_path, fmt):
    path = tmp_path / f"book.{fmt}"
    tone = (0.2 * np.sin(2 * np.pi * 220 * np.arange(3 * RATE) / RATE)).astype(np.float32)
    write_encoded(path, [tone], fmt, RATE, {"title": "x"}, CHAPTERS, language3=TAGS.language3,
                  finish=lambda p: write_tags(p, TAGS, track=(1, 3) if fmt == "mp3" else None))
    return path


def probe(path):
    return json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-show_chapters", "-of",
                                      "json", str(path)], capture_output=True, text=True, check=True).stdout)


def test_m4b_atoms(tmp_path):
    from mutagen.mp4 import MP4

    path = encoded(tmp_path, "m4b")
    tags = MP4(str(path)).tags
    assert tags["\xa9nam"] == ["The Rain Book"] and tags["\xa9ART"] == ["Ann Author; Bo Writer"]
    assert tags["\xa9wrt"] == ["Synthetic voice (emma)"] and tags["\xa9gen"] == ["Audiobook"] and tags["\xa9day"] == ["2019"]
    assert tags["\xa9cmt"] == [SYNTHETIC_NOTE] and tags["stik"] == [2] and tags["\xa9mvn"] == ["Weather Tales"] and tags["\xa9mvi"] == [2]
    assert bytes(tags["----:com.apple.iTunes:ISBN"][0]) == b"9780306406157"
    assert bytes(tags["covr"][0]) == TAGS.cover.data
    info = probe(path)
    assert [c["tags"]["title"] for c in info["chapters"]] == [title for title, *_ in CHAPTERS]
    assert any(s.get("disposition", {}).get("attached_pic") == 1 for s in info["streams"])
    assert next(s for s in info["streams"] if s["codec_type"] == "audio")["tags"]["language"] == "eng"


def test_mp3_frames_and_chapter_order(tmp_path):
    from mutagen.id3 import ID3

    path = encoded(tmp_path, "mp3")
    frames = ID3(str(path))
    assert frames.version[:2] == (2, 3)
    assert str(frames["TIT2"]) == "The Rain Book" and str(frames["TCOM"]) == "Synthetic voice (emma)"
    assert str(frames["TCON"]) == "Audiobook" and str(frames["TLAN"]) == "eng" and str(frames["TRCK"]) == "1/3"
    assert str(frames["TXXX:SERIES"]) == "Weather Tales" and str(frames["TXXX:SERIES-PART"]) == "2"
    assert frames.getall("COMM")[0].text == [SYNTHETIC_NOTE]
    assert frames.getall("APIC")[0].data == TAGS.cover.data and frames.getall("APIC")[0].type == 3
    # mutagen sorts frames by size on save: the chapters must still come out in time order.
    info = probe(path)
    print(f"[tags] mp3 chapters: {[(c['tags']['title'], c['start_time']) for c in info['chapters']]}")
    assert [c["tags"]["title"] for c in info["chapters"]] == [title for title, *_ in CHAPTERS]


def test_book_tags_overrides_and_cover_checks(tmp_path):
    book = Book("From the Book", (Chapter("", ("x",)),), Metadata(authors=("Meta Author",), date="1999-01-01", language="fr"))
    tags = book_tags(book, voice="tom")
    assert (tags.title, tags.artist, tags.narrator, tags.year, tags.language3) == ("From the Book", "Meta Author", "Synthetic voice (tom)", "1999", "fra")
    image = tmp_path / "cover.gif"
    from PIL import Image

    Image.new("RGB", (20, 30)).save(image, "GIF")
    tags = book_tags(book, title="Mine", author="Me", narrator="A. Reader", cover=image)
    assert (tags.title, tags.artist, tags.narrator) == ("Mine", "Me", "A. Reader")
    assert tags.cover.media_type == "image/png" and (tags.cover.width, tags.cover.height) == (20, 30)  # GIF converted
    with pytest.raises(UserError, match="--cover image not found"):
        read_cover(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(UserError, match="cannot be read as an image"):
        read_cover(tmp_path / "text.jpg")
    assert language_alpha3("zz-not a tag") == "" and language_alpha3("de-AT") == "deu"
