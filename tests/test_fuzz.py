"""Fuzzing: manuscript parsing and chunking on arbitrary unicode never crash, lose a word or break a bound."""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tutortoietts.chunking import ChunkLimits, chunk_book, chunk_text, expected_mel_tokens, measure, normalise_text, text_tokens
from tutortoietts.engine.tokenizer import clean
from tutortoietts.errors import UserError
from tutortoietts.manuscript import Book, Chapter, parse_text, read_book, tidy_text

FALLBACK_TITLE = "~"  # no letter or digit in it, so it never counts as a word of the text
PAUSES = {"sentence", "paragraph", "chapter"}

# ---------------------------------------------------------------------------------------------
# Strategies: every unicode category but surrogates (a str holding one cannot be written to a
# file), mixed with the characters and lines that parsers trip on.

ANY_CHAR = st.characters(exclude_categories=("Cs",))
TRICKY = st.sampled_from([
    "\n", "\n\n", "\r", "\r\n", "\x0c", "\x0b", "\x00", "\x85", "\t", "\u2028", "\u2029", "\ufeff", "\u200b",
    "\u200d", "\u2060", "\u00ad", "\u00a0", "\u3000", "\u0301", "\u0308\u0301", "\u202e", "\u200f",
    "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627", "\u4e2d\u6587", "\U0001f600",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\U0001f1eb\U0001f1f7", "\ufdfd", "\U000e0001",
    "# ", "## ", "###### ", "#", "***", "* * *", "---", "___", "===", "> ", "> > ", "- ", "* ", "+ ", "1. ",
    "2) ", "```", "~~~", "    ", "[", "]", "](", "![", "<", ">", "<!--", "-->", "*", "**", "_", "__", "`",
    "~~", "\\", "Chapter 1", "CHAPTER XII.", "Chapter Twelve: The Storm", "Part One", "Prologue", "Epilogue",
    " - ", "\u2014", "--", "...", "\u2026", ".", "?", "!", ",", ";", ":", '"', "'", "\u201c", "\u2019",
    "$3.50", "1,200", "12th", "4.5", "Mr.", "e.g.", "p.m.", "https://example.com/a_(b)",
])
RUN = st.builds(lambda char, count: char * count, ANY_CHAR | st.sampled_from(list(" \n#*-=>[<_`~.x")), st.integers(1, 400))
LONG_WORD = st.text(st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=40, max_size=400)
PLAIN_WORDS = st.lists(st.text("abcdefghij", min_size=1, max_size=8), min_size=1, max_size=8).map(" ".join)
# one_of picks its branches evenly: repeats weight the tricky pieces over the long ones.
FRAGMENT = st.one_of(TRICKY, TRICKY, TRICKY, PLAIN_WORDS, PLAIN_WORDS, st.text(ANY_CHAR, max_size=12), RUN, LONG_WORD)
LINE_START = st.sampled_from([
    "", "", "", "", "# ", "## ", "### ", "> ", "- ", "* ", "1. ", "    ", "Chapter 1", "CHAPTER IV.", "Part One",
    "Prologue", "***", "---", "===", "```",
])
LINE = st.tuples(LINE_START, st.lists(FRAGMENT, max_size=5)).map(lambda pair: pair[0] + "".join(pair[1]))
LINE_BREAK = st.sampled_from(["\n", "\n", "\n\n", "\n\n\n", "\r\n", "\r", "\u2028", "\u2029", "\x0c"])
MANUSCRIPT = st.lists(st.tuples(LINE, LINE_BREAK), max_size=16).map(lambda lines: "".join(line + end for line, end in lines))

# Markdown made of structure lines and words free of markup characters: every word must survive.
MD_WORD = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp", "Cf"), exclude_characters="#*_-+=>[]()<!`~\\.:\u2013\u2014)"),
    min_size=1, max_size=10,
)
MD_LINE = st.one_of(
    st.tuples(st.sampled_from(["", "", "", "# ", "## ", "### ", "> ", "> > ", "- ", "* ", "+ ", "    "]),
              st.lists(MD_WORD, min_size=1, max_size=6).map(" ".join)).map("".join),
    st.sampled_from(["", "", "***", "* * *", "---", "___", "===", "```", "~~~", "chapter one", "Part two"]),
)
MARKDOWN = st.lists(MD_LINE, min_size=1, max_size=25).map("\n".join)

# A small token limit makes "words" past it (and so cutting) common in short random texts. Not
# below 50: one character can measure that much ("\u28ff" cleans to a number: "[dtwelve million, ...]").
LIMITS = st.sampled_from([ChunkLimits(), ChunkLimits(max_mel_tokens=40), ChunkLimits(max_text_tokens=64)])
# A deeper hunt than the default ~40 s run: TUTORTOIETTS_FUZZ_SCALE=10 multiplies every example count.
SCALE = float(os.environ.get("TUTORTOIETTS_FUZZ_SCALE", "1"))
FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run_counted(name: str, capsys, max_examples: int, strategy, check) -> None:
    """Run `check` as a hypothesis property and print how many examples it really ran."""
    count = 0

    @settings(max_examples=max(1, round(max_examples * SCALE)), **FUZZ_SETTINGS)
    @given(strategy)
    def counted(value):
        nonlocal count
        count += 1
        if isinstance(value, tuple):
            check(*value)
        else:
            check(value)

    started = time.perf_counter()
    counted()
    with capsys.disabled():
        print(f"\n[fuzz] {name}: {count} examples in {time.perf_counter() - started:.1f} s")


# ---------------------------------------------------------------------------------------------
# What is promised, as helpers


def alnum(text: str) -> str:
    return "".join(char for char in text if char.isalnum())


def is_subsequence(part: str, whole: str) -> bool:
    characters = iter(whole)
    return all(char in characters for char in part)


def spoken_words(text: str) -> list[str]:
    """Whitespace-separated words with their letters and digits only; markup-only words drop out."""
    return [alnum(word) for word in text.split() if alnum(word)]


def book_texts(book: Book) -> list[str]:
    """Everything the parser kept, in reading order: book title (when from the text), chapter titles, paragraphs."""
    texts = [book.title] if book.title != FALLBACK_TITLE else []
    for chapter in book.chapters:
        texts += [chapter.title, *chapter.paragraphs]
    return texts


def has_speech(text: str) -> bool:
    return any(character.isalnum() for character in clean(text))  # punctuation alone is nothing to read


def assert_every_word_once_in_order(words: list[str], chunk_words: list[str], limits: ChunkLimits) -> None:
    """Chunk words are the text's words, once and in order, with two exceptions only.

    A word past the token limit is read in consecutive pieces that make it up exactly; a word with
    nothing to say (emoji, a lone quote mark, punctuation alone), or such a piece of a cut word,
    may be missing, when the chunk it formed was left out.
    """
    position = 0
    for word in words:
        if position < len(chunk_words) and chunk_words[position] == word:
            position += 1
            continue
        if text_tokens(word) <= limits.max_text_tokens:
            assert not has_speech(word), f"word lost or changed: {word!r}, chunks have {chunk_words[position:position + 3]!r}"
            continue
        rest = word
        while rest:
            piece = chunk_words[position] if position < len(chunk_words) else ""
            if piece and rest.startswith(piece):
                rest = rest[len(piece):]
                position += 1
                continue
            # Pieces left out up to the next one read (or to the word's end) must say nothing.
            found = rest.find(piece) if piece else -1
            skipped = rest[:found] if found > 0 else rest
            assert not has_speech(skipped), f"cut word {word[:40]!r}... not all there: {skipped[:40]!r} missing"
            rest = rest[len(skipped):]
    assert position == len(chunk_words), f"chunks have words the text has not: {chunk_words[position:position + 3]!r}"


def assert_chunk_bounds(chunks, book: Book, limits: ChunkLimits) -> None:
    """Within the engine's text limit, something to say, pauses and indices consistent and ordered."""
    for chunk in chunks:
        assert chunk.text and chunk.text == " ".join(chunk.text.split()), repr(chunk.text[:80])
        assert has_speech(chunk.text), f"chunk with nothing to say: {chunk.text[:80]!r}"
        tokens = text_tokens(chunk.text)
        assert tokens <= limits.max_text_tokens, (tokens, chunk.text[:80])
        if len(chunk.text.split()) > 1:  # one word alone may run past the mel estimate (it cannot be split)
            assert expected_mel_tokens(chunk.text, limits) <= limits.max_expected_mel_tokens(), chunk.text[:80]
        assert chunk.pause_after in PAUSES
    assert [chunk.chapter for chunk in chunks] == sorted(chunk.chapter for chunk in chunks)
    for chapter in sorted({chunk.chapter for chunk in chunks}):
        assert 0 <= chapter < len(book.chapters)
        mine = [chunk for chunk in chunks if chunk.chapter == chapter]
        assert [chunk.index for chunk in mine] == list(range(len(mine)))
        assert [chunk.pause_after for chunk in mine].count("chapter") == 1 and mine[-1].pause_after == "chapter"


def check_chunked(book: Book, limits: ChunkLimits) -> None:
    for announce_titles in (False, True):
        chunks = chunk_book(book, limits, announce_titles=announce_titles)
        assert_chunk_bounds(chunks, book, limits)
    words = [word for chapter in book.chapters for paragraph in chapter.paragraphs for word in normalise_text(paragraph).split()]
    chunk_words = [word for chunk in chunk_book(book, limits, announce_titles=False) for word in chunk.text.split()]
    assert_every_word_once_in_order(words, chunk_words, limits)


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_or_empty(text: str, kind: str) -> Book | None:
    """parse_text may refuse a manuscript only as empty, and only with a UserError."""
    try:
        return parse_text(text, kind, FALLBACK_TITLE)
    except UserError as error:
        assert "empty" in str(error)
        return None


def test_parse_txt_never_crashes_and_keeps_every_word(capsys):
    def check(text):
        parse_or_empty(text, "txt")
        # The closing paragraph keeps a trailing heading (which has no text of its own, so the
        # parser drops it by design) from hiding a lost word.
        text += "\n\nzzend"
        book = parse_or_empty(text, "txt")
        tidy = tidy_text(text)
        assert book is not None
        assert alnum("".join(book_texts(book))) == alnum(tidy)  # headings' letters live on in titles
        if not any(chapter.title for chapter in book.chapters):
            assert [word for chapter in book.chapters for p in chapter.paragraphs for word in p.split()] == tidy.split()
        for chapter in book.chapters:
            assert all(paragraph.strip() == paragraph and paragraph for paragraph in chapter.paragraphs)
            assert "\n" not in chapter.title and all("\n" not in paragraph for paragraph in chapter.paragraphs)

    run_counted("parse txt: no crash, every word", capsys, 400, MANUSCRIPT, check)


def test_parse_md_never_crashes_and_invents_nothing(capsys):
    def check(text):
        book = parse_or_empty(text, "md")
        if book is None:
            return
        # Markup may drop letters (image alt text, link targets, tags, list numbers): what is kept
        # comes from the text, in order.
        kept = alnum("".join(book_texts(book)))
        assert is_subsequence(kept, alnum(tidy_text(text))), kept[:80]
        for chapter in book.chapters:
            assert all(paragraph.strip() == paragraph and paragraph for paragraph in chapter.paragraphs)

    run_counted("parse md: no crash, nothing invented or reordered", capsys, 400, MANUSCRIPT, check)


def test_parse_md_structure_keeps_every_word(capsys):
    def check(text):
        text += "\n\nzzend"
        book = parse_or_empty(text, "md")
        assert book is not None
        assert spoken_words(" ".join(book_texts(book))) == spoken_words(tidy_text(text))

    run_counted("parse md structure: every word", capsys, 300, MARKDOWN, check)


# ---------------------------------------------------------------------------------------------
# Chunking


def test_chunk_parsed_books_keep_bounds_and_words(capsys):
    def check(text, kind, limits):
        book = parse_or_empty(text, kind)
        if book is not None:
            check_chunked(book, limits)

    run_counted("chunk parsed books: bounds, every word", capsys, 150, st.tuples(MANUSCRIPT, st.sampled_from(["txt", "md"]), LIMITS), check)


def test_chunk_text_of_any_unicode(capsys):
    def check(text, limits):
        chunks = chunk_text(text, limits)
        book = Book(FALLBACK_TITLE, (Chapter("", (text,)),))
        assert_chunk_bounds(chunk_book(book, limits), book, limits)
        chunk_words = [word for chunk in chunks for word in chunk.split()]
        assert_every_word_once_in_order(normalise_text(text).split(), chunk_words, limits)

    run_counted("chunk_text of raw unicode: bounds, every word", capsys, 150, st.tuples(MANUSCRIPT, LIMITS), check)


def test_joined_words_measure_within_their_parts_bounds(capsys):
    """The packer's shortcut (chunking.measure): bounds from words measured alone hold for the joined text."""

    def check(words):
        text = " ".join(words)
        bounds = measure(text)
        assert bounds.least_tokens <= text_tokens(text) <= bounds.most_tokens, (bounds, text_tokens(text))
        assert bounds.least_chars <= len(clean(text)) <= bounds.most_chars, (bounds, len(clean(text)))

    word = st.one_of(st.text(ANY_CHAR, min_size=1, max_size=12), TRICKY).filter(lambda w: w.split() == [w])
    run_counted("measure bounds hold", capsys, 200, st.lists(word, min_size=1, max_size=12), check)


# ---------------------------------------------------------------------------------------------
# Through the file


def test_read_book_of_any_bytes(tmp_path, capsys):
    def check(raw, suffix):
        path = tmp_path / f"book{suffix}"
        path.write_bytes(raw)
        try:
            book = read_book(path)
        except UserError:
            return
        assert isinstance(book, Book) and book.chapters

    encoded = st.tuples(MANUSCRIPT, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le"])).map(
        lambda pair: pair[0].encode(pair[1])
    )
    raw = st.one_of(st.binary(max_size=300), encoded)
    run_counted("read_book of random bytes", capsys, 200, st.tuples(raw, st.sampled_from([".txt", ".md", ".markdown"])), check)


EPUB_CONTAINER = (b"<?xml version='1.0'?><container xmlns='urn:oasis:names:tc:opendocument:xmlns:container' version='1.0'>"
                  b"<rootfiles><rootfile full-path='OEBPS/content.opf' media-type='application/oebps-package+xml'/></rootfiles></container>")
EPUB_OPF = (b"<?xml version='1.0'?><package xmlns='http://www.idpf.org/2007/opf' version='3.0' unique-identifier='id'>"
            b"<metadata xmlns:dc='http://purl.org/dc/elements/1.1/'><dc:identifier id='id'>x</dc:identifier><dc:title>T</dc:title></metadata>"
            b"<manifest><item id='nav' href='nav.xhtml' media-type='application/xhtml+xml' properties='nav'/>"
            b"<item id='ch' href='ch.xhtml' media-type='application/xhtml+xml'/></manifest><spine><itemref idref='ch'/></spine></package>")
EPUB_NAV = (b"<html xmlns='http://www.w3.org/1999/xhtml' xmlns:epub='http://www.idpf.org/2007/ops'><body><nav epub:type='toc'>"
            b"<ol><li><a href='ch.xhtml'>One</a></li></ol></nav></body></html>")
EPUB_CHAPTER = b"<html xmlns='http://www.w3.org/1999/xhtml'><body><h1>One</h1><p>Some words to read.</p></body></html>"


def test_read_book_of_random_epub_zips(tmp_path, capsys):
    """A zip that says it is an EPUB (its mimetype entry), each part valid, damaged or random bytes:
    read_book gives a book or one UserError line, never another exception."""
    import zipfile

    def part(valid: bytes):
        inserted = st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=24))
        return st.one_of(st.just(valid), st.binary(max_size=200),
                         inserted.map(lambda cut: valid[: cut[0]] + cut[1] + valid[cut[0] :]),
                         st.integers(0, len(valid)).map(lambda n: valid[:n]))

    def check(container, opf, nav, chapter):
        path = tmp_path / "book.epub"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("mimetype", "application/epub+zip")
            for name, data in (("META-INF/container.xml", container), ("OEBPS/content.opf", opf), ("OEBPS/nav.xhtml", nav),
                               ("OEBPS/ch.xhtml", chapter)):
                archive.writestr(name, data)
        try:
            book = read_book(path)
        except UserError as error:
            assert "\n" not in str(error)
            return
        assert isinstance(book, Book) and book.chapters

    parts = st.tuples(part(EPUB_CONTAINER), part(EPUB_OPF), part(EPUB_NAV), part(EPUB_CHAPTER))
    run_counted("read_book of random EPUB zips", capsys, 200, parts, check)


# ---------------------------------------------------------------------------------------------
# Explicit cases from the bad-input list


def test_five_megabyte_line_without_punctuation(tmp_path, capsys):
    """One 5 MB paragraph: parsed and chunked in linear time, every chunk bounded, every word kept."""
    rng = random.Random(5)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 10))) for _ in range(3000)]
    line = " ".join(rng.choice(vocabulary) for _ in range(900_000))[: 5 * 2**20].rstrip()
    path = tmp_path / "five-mb.txt"
    path.write_text(line + "\n", encoding="utf-8")
    started = time.perf_counter()
    book = read_book(path)
    parsed = time.perf_counter() - started
    assert book.chapters == (Chapter("", (line,)),)
    assert parse_text(line, "md", FALLBACK_TITLE).chapters == (Chapter("", (line,)),)
    started = time.perf_counter()
    chunks = chunk_book(book)
    chunked = time.perf_counter() - started
    assert " ".join(chunk.text for chunk in chunks) == line
    limits = ChunkLimits()
    assert max(text_tokens(chunk.text) for chunk in chunks) <= limits.max_text_tokens
    assert max(expected_mel_tokens(chunk.text, limits) for chunk in chunks) <= limits.max_expected_mel_tokens()
    sizes = [len(chunk.text) for chunk in chunks]
    with capsys.disabled():
        print(f"\n[fuzz] 5 MB line: read in {parsed:.1f} s, chunked in {chunked:.1f} s into {len(chunks)} chunks "
              f"of {min(sizes)}..{max(sizes)} characters")
    assert chunked < 60  # it was ~0.4 ms per character (35 minutes) before packing stopped tokenising every span


URL = "https://example.com/" + "/".join(f"section-{i}_(part)?q={i}&r=%20x.y" for i in range(200))[:4980]


@pytest.mark.parametrize("word", ["x" * 5000, "Pneumono" * 625, URL, "\u4e2d" * 2000, "a\U0001f600" * 1500], ids=["letters", "latin", "url", "cjk", "mixed-emoji"])
def test_a_word_past_the_token_limit_is_cut_not_refused(word):
    """The engine cannot take it and refusing it would stop the book: it is read in pieces.

    Each piece is the longest prefix within the bounds, so the word is all there, in order.
    """
    limits = ChunkLimits()
    assert text_tokens(word) > limits.max_text_tokens
    for text in (word, f"He said {word} and left. Then he came back."):
        chunks = chunk_text(text, limits)
        assert len(chunks) > 1
        assert all(text_tokens(chunk) <= limits.max_text_tokens and has_speech(chunk) for chunk in chunks)
        assert_every_word_once_in_order(normalise_text(text).split(), [w for chunk in chunks for w in chunk.split()], limits)


def test_a_run_of_emoji_has_nothing_to_say():
    """3000 emoji clean to nothing: such a chunk would be refused by the engine ("nothing to say")
    and fail the render every time, so it is left out; the words beside it are all kept."""
    emoji = "\U0001f600" * 3000
    assert chunk_text(emoji) == []
    chunks = chunk_text(f"He said {emoji} and left.")
    assert " ".join(chunks) == "He said and left."
    book = Book(FALLBACK_TITLE, (Chapter("One", ("Hello.",)), Chapter("Two", (emoji,)), Chapter("", (emoji,))))
    chunks = chunk_book(book)
    assert [(c.chapter, c.text, c.pause_after) for c in chunks] == [
        (0, "One.", "paragraph"), (0, "Hello.", "chapter"), (1, "Two.", "chapter"),
    ]


def test_a_run_of_thousands_of_digits():
    # Read digit by digit (past 36 digits no one says "septillion"), cut into bounded chunks.
    chunks = chunk_text("He wrote " + "7" * 5000 + " once.")
    assert all(text_tokens(chunk) <= ChunkLimits().max_text_tokens for chunk in chunks)
    joined = " ".join(chunks)
    assert joined.count("7") == 5000 and joined.startswith("He wrote 7") and joined.endswith("once.")
