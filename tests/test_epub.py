"""EPUB in, audiobook out: chapters from the navigation, what is not read, metadata, bad files, and a
real render to m4b on tiny weights (chapters, cover stream, tags by ffprobe)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli_support import FAST, cli, cli_in_process, ffmpeg_missing
from tests.epub_support import BAD_EPUBS, bad_epub, build_epub, cover_image, font_obfuscation, page
from tutortoietts.errors import UserError
from tutortoietts.manuscript import read_book

STORY = [
    ("Part One. Chapter 1", ("It was a dark night. The rain fell on the roof.", "Bread and salt", "A lantern",
                             "Never go out in the rain, she said.")),
    ("The Second Part", ("The second part begins here.",)),
    ("Chapter 2", ("The morning came at last.",)),
]
NEVER_READ = ("Endnote", "aside that is a footnote", "painting", "7", "1", "2", "Copyright", "All rights reserved", "Notes")


def chapters_of(book) -> list[tuple[str, tuple[str, ...]]]:
    return [(chapter.title, chapter.paragraphs) for chapter in book.chapters]


def spoken(book) -> str:
    return " ".join(" ".join([chapter.title, *chapter.paragraphs]) for chapter in book.chapters)


@pytest.mark.parametrize("version", [3, 2])
def test_chapters_from_navigation_in_spine_order(tmp_path, version):
    """Nested navigation (Part > chapters, one starting mid-document), notes, page numbers, alt text."""
    book = read_book(build_epub(tmp_path / "rain.epub", version=version, cover=cover_image()))
    print(f"[epub] EPUB {version}: {chapters_of(book)}; left out {book.left_out}")
    assert chapters_of(book) == STORY
    paragraphs = " ".join(p for chapter in book.chapters for p in chapter.paragraphs)
    for text in NEVER_READ:  # notes, note markers, the page number, alt text, the copyright page
        assert text not in paragraphs.replace(".", " ").split() and text not in paragraphs, text
    assert "Copyright (front/back matter)" in book.left_out and "Notes (notes)" in book.left_out


@pytest.mark.parametrize("version", [3, 2])
def test_metadata_series_and_cover(tmp_path, version):
    meta = read_book(build_epub(tmp_path / "rain.epub", version=version, cover=cover_image((40, 64)))).metadata
    print(f"[epub] EPUB {version} metadata: {meta}")
    assert (meta.authors, meta.language, meta.publisher, meta.date, meta.year) == (("Ann Author",), "en", "Lantern Press", "2019-05-02", "2019")
    assert meta.isbn == "9780306406157" and meta.identifier == "urn:isbn:9780306406157"
    assert meta.description == "A short book about rain."  # the markup in it is not read
    assert (meta.series, meta.series_index) == ("Weather Tales", "2")  # calibre's "2.0" read as 2
    assert meta.cover is not None and (meta.cover.media_type, meta.cover.width, meta.cover.height) == ("image/png", 40, 64)
    assert meta.cover.data.startswith(b"\x89PNG")


@pytest.mark.parametrize("version", [3, 2])
def test_without_navigation_spine_and_first_headings(tmp_path, version):
    book = read_book(build_epub(tmp_path / "rain.epub", version=version, nav=False))
    print(f"[epub] no nav: {chapters_of(book)}")
    # Without navigation the second part is no chapter of its own: its heading is read as a line.
    assert chapters_of(book) == [
        ("Part One. Chapter 1", (*STORY[0][1], "The Second Part", "The second part begins here.")),
        ("Chapter 2", ("The morning came at last.",)),
    ]
    assert any(label.startswith("copyright.xhtml") for label in book.left_out)


def test_include_front_matter_keeps_it_but_never_notes(tmp_path):
    path = build_epub(tmp_path / "rain.epub", version=3, cover=cover_image())
    book = read_book(path, include_front_matter=True)
    print(f"[epub] with front matter: {[c.title for c in book.chapters]}")
    assert ("Copyright", ("Copyright 2019 by Ann Author. All rights reserved.",)) in chapters_of(book)
    assert chapters_of(book)[-3:] == STORY
    assert "Endnote" not in spoken(book)


def test_unreferenced_documents_continue_their_chapter(tmp_path):
    """A chapter split over two files (calibre does that) reads on; a notes file is still left out."""
    split = page("chapter2b.xhtml", "", "<p>The rest of chapter two.</p>")
    book = read_book(build_epub(tmp_path / "rain.epub", version=3, extra_pages=[split]))
    assert chapters_of(book)[-1] == ("Chapter 2", ("The morning came at last.", "The rest of chapter two."))


# ---------------------------------------------------------------------------------------------
# Bad files: one line each, raised by the reader (test_bad_input runs them through the CLI).


@pytest.mark.parametrize("case", sorted(BAD_EPUBS))
def test_bad_epub_is_one_line(tmp_path, case):
    path = bad_epub(tmp_path, case)
    with pytest.raises(UserError) as error:
        read_book(path)
    message = str(error.value)
    print(f"[epub] {case}: {message}")
    assert BAD_EPUBS[case][1] in message and "\n" not in message
    assert not (tmp_path / "evil.sh").exists() and not Path("/etc/cron.d/evil").exists()


def test_all_front_matter_is_refused_and_the_flag_reads_it(tmp_path):
    path = build_epub(tmp_path / "front.epub", version=3, front_only=True)
    with pytest.raises(UserError, match=r"has nothing to read but front and back matter \(.*Copyright\): use --include-front-matter"):
        read_book(path)
    assert [c.title for c in read_book(path, include_front_matter=True).chapters][-1] == "Copyright"


def test_font_obfuscation_is_not_drm(tmp_path):
    path = build_epub(tmp_path / "fonts.epub", version=3)
    font_obfuscation(path)
    assert chapters_of(read_book(path)) == STORY


# ---------------------------------------------------------------------------------------------
# Through the CLI: `chapters` (dry run) and `generate` to m4b on tiny weights.


def test_chapters_command_json(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUTORTOIETTS_CACHE", workspace["env"]["TUTORTOIETTS_CACHE"])
    monkeypatch.setenv("COLUMNS", "200")
    path = build_epub(tmp_path / "rain.epub", version=3, cover=cover_image())
    result = cli_in_process("chapters", path, "--json", "--preset", "ultra_fast_v2", "--device", "cpu", monkeypatch=monkeypatch, capsys=capsys)
    plan = json.loads(result.stdout)
    print(f"[epub] chapters --json: {plan['chapters']}, speed {plan['speed']}")
    assert [row["title"] for row in plan["chapters"]] == [title for title, _ in STORY]
    assert [row["words"] for row in plan["chapters"]] == [sum(len(p.split()) for p in paragraphs) for _, paragraphs in STORY]
    assert all(row["chunks"] >= 1 and row["audio_seconds"] > 0 and row["render_seconds"] > 0 for row in plan["chapters"])
    assert plan["metadata"]["series"] == "Weather Tales" and plan["metadata"]["cover"] == "image/png, 60x90"
    assert "no run measured on this machine yet" in plan["speed"]["source"]
    table = cli_in_process("chapters", path, "--preset", "ultra_fast_v2", "--device", "cpu", monkeypatch=monkeypatch, capsys=capsys)
    assert table.returncode == 0 and "The Second Part" in table.stdout and "Weather Tales" in table.stdout and "left out" in table.stdout


def probe_streams(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-show_chapters", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")
@pytest.mark.parametrize("version", [3, 2])
def test_epub_renders_to_m4b_with_chapters_cover_and_tags(workspace, models, tmp_path, version):
    path = build_epub(tmp_path / "rain.epub", version=version, cover=cover_image((48, 72)))
    out = tmp_path / "job"
    result = cli("generate", path, "--voice", workspace["voice"], "--models-dir", models, *FAST, "--out", out,
                 "--narrator", "Test Narrator", "--subtitles", "vtt", "--quiet", env=workspace["env"])
    m4b = Path(result.stdout.strip())
    info = probe_streams(m4b)
    tags = {key.lower(): value for key, value in info["format"]["tags"].items()}
    print(f"[epub] EPUB {version} -> {m4b.name} in {result.seconds:.1f} s: chapters "
          f"{[c['tags']['title'] for c in info['chapters']]}, streams {[s['codec_type'] + '/' + s['codec_name'] for s in info['streams']]}, tags {tags}")
    assert m4b.name == "The Rain Book.m4b"
    assert [c["tags"]["title"] for c in info["chapters"]] == [title for title, _ in STORY]
    pictures = [s for s in info["streams"] if s.get("disposition", {}).get("attached_pic") == 1]
    assert len(pictures) == 1 and (pictures[0]["width"], pictures[0]["height"]) == (48, 72)
    assert tags["title"] == tags["album"] == "The Rain Book" and tags["artist"] == "Ann Author"
    assert tags["genre"] == "Audiobook" and tags["date"] == "2019" and tags["composer"] == "Test Narrator"
    assert "synthetic voice" in tags["comment"] and tags["synthetic_narration"] == "yes"
    assert (tags["series"], tags["series-part"], tags["language"]) == ("Weather Tales", "2", "en")
    assert tags["description"] == "A short book about rain."
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert audio["tags"]["language"] == "eng"
    # Subtitles: one for the book, one per chapter, the book's cues in chapter order.
    vtt = m4b.with_suffix(".vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT") and "The second part begins here." in vtt
    assert len(list((out / "chapters").glob("*.vtt"))) == 3
    chapter_files = sorted((out / "chapters").glob("*.m4a"))
    assert len(chapter_files) == 3 and all(probe_streams(f)["format"]["tags"].get("genre") == "Audiobook" for f in chapter_files)


def test_render_estimate_comes_from_measured_runs(tmp_path, monkeypatch, models):
    """The chapters table's speed: the default until a run is recorded, then this machine's, then scaled."""
    from tutortoietts.settings import load_preset
    from tutortoietts.speed import estimate, record_speed

    monkeypatch.setenv("TUTORTOIETTS_CACHE", str(tmp_path / "cache"))
    fast, slow = load_preset("ultra_fast_v2"), load_preset("balanced_v2")
    assert "no run measured" in estimate("ultra_fast_v2", fast, "cpu", models).source
    record_speed("ultra_fast_v2", "cpu", wall_seconds=30.0, audio_seconds=10.0, models_dir=models)
    record_speed("ultra_fast_v2", "cpu", wall_seconds=10.0, audio_seconds=10.0, models_dir=models)
    measured = estimate("ultra_fast_v2", fast, "cpu", models)
    assert measured.seconds_per_audio_second == 2.0 and "measured on this machine (cpu): 2 generate run(s)" in measured.source
    scaled = estimate("balanced_v2", slow, "cpu", models)
    assert scaled.seconds_per_audio_second > 2.0 and "scaled to balanced_v2" in scaled.source
    assert "no run measured" in estimate("ultra_fast_v2", fast, "cpu", tmp_path / "other-weights").source
