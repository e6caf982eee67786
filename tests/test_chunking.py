"""Chunking: normalisation keeps every word, sentences respect abbreviations, chunks keep the model's bounds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tutortoietts.chunking import (
    MEL_TOKENS_PER_SECOND,
    ChunkLimits,
    chunk_book,
    chunk_text,
    expected_mel_tokens,
    has_speech,
    normalise_text,
    split_sentences,
    target_chars,
    text_tokens,
)
from tutortoietts.manuscript import Book, Chapter

WORDS = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFG", min_size=1, max_size=12),
    st.sampled_from(["Mr.", "Dr.", "St.", "Mrs.", "e.g.", "p.m.", "etc.", "no.", "U.S.A."]),
    st.integers(min_value=0, max_value=9999).map(str),
    st.sampled_from(["$3.50", "12th", "1,200", "4.5", "\u201cHello,\u201d", "it\u2019s", "end\u2014start", "wait\u2026"]),
    st.sampled_from([".", ",", ";", ":", "!", "?", "\u2014", "--", "-", '"', "'"]),
)
SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\u00a0", "\t", ". ", "! ", "? ", ", ", "; "])


@st.composite
def free_text(draw, max_words=120):
    words = draw(st.lists(WORDS, min_size=1, max_size=max_words))
    separators = draw(st.lists(SEPARATORS, min_size=len(words), max_size=len(words)))
    return "".join(word + separator for word, separator in zip(words, separators))


def assert_within_bounds(chunks: list[str], limits: ChunkLimits) -> None:
    for chunk in chunks:
        assert chunk.strip(), "empty chunk"
        assert text_tokens(chunk) <= limits.max_text_tokens, (text_tokens(chunk), chunk)
        assert expected_mel_tokens(chunk, limits) <= limits.max_expected_mel_tokens(), chunk


def alnum(text: str) -> str:
    return "".join(char for char in text if char.isalnum())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(free_text())
def test_normalise_keeps_every_letter_and_digit(text):
    assert alnum(normalise_text(text)) == alnum(text)


@pytest.mark.parametrize("max_mel_tokens", [500, 150])
def test_every_word_once_in_order_and_bounds_hold(max_mel_tokens):
    limits = ChunkLimits(max_mel_tokens=max_mel_tokens)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(free_text())
    @example('" ')  # a chunk of a lone quote mark: nothing to say, left out (found by a CI run)
    def check(text):
        chunks = chunk_text(text, limits)
        words = normalise_text(text).split()
        position = 0
        for word in (word for chunk in chunks for word in chunk.split()):
            # In order, once; a word may be missing only with its whole chunk, one with nothing to say.
            while words[position] != word:
                assert not has_speech(words[position]), words[position]
                position += 1
            position += 1
        assert not any(has_speech(word) for word in words[position:])
        assert_within_bounds(chunks, limits)

    check()


def test_long_texts_keep_bounds_and_report_sizes():
    limits = ChunkLimits()
    text = " ".join(
        f"Sentence {i} has $4.{i:02d} in it, Mr. Brown said; then he walked {i} miles." if i % 3 == 0
        else "The cat sat on the mat and the dog ran to the park to play in the sun."
        for i in range(60)
    )
    chunks = chunk_text(text, limits)
    assert_within_bounds(chunks, limits)
    worst_tokens = max(map(text_tokens, chunks))
    worst_mel = max(expected_mel_tokens(chunk, limits) for chunk in chunks)
    print(f"[chunking] {len(chunks)} chunks, sizes {min(map(len, chunks))}..{max(map(len, chunks))} chars, "
          f"max text tokens {worst_tokens}/{limits.max_text_tokens}, max expected mel {worst_mel:.0f}/{limits.max_expected_mel_tokens():.0f}")
    assert [w for c in chunks for w in c.split()] == normalise_text(text).split()


def test_normalisation_of_typography():
    text = "\u201cWell,\u201d she said\u00a0\u2014 it\u2019s 5\u20136 o\u2019clock\u2026"
    assert normalise_text(text) == "\"Well,\" she said - it's 5-6 o'clock..."
    assert normalise_text("one--two") == "one - two"


def test_abbreviations_do_not_split_sentences():
    text = "Mr. Smith met Dr. Jones on St. James Street. They talked. Mrs. Brown, e.g. the baker, arrived."
    sentences = split_sentences(text)
    print("[chunking] sentences:", sentences)
    assert sentences == [
        "Mr. Smith met Dr. Jones on St. James Street.",
        "They talked.",
        "Mrs. Brown, e.g. the baker, arrived.",
    ]


def test_quoted_question_followed_by_lower_case_stays_one_sentence():
    assert split_sentences("\u201cReally?\u201d she said. Then he left.") == ["\u201cReally?\u201d she said.", "Then he left."]


def test_dense_text_gets_smaller_chunks_than_simple_text():
    # A generous mel bound so the complexity targets, not the duration cap, decide the sizes.
    limits = ChunkLimits(max_mel_tokens=2000)
    simple = " ".join(["The cat sat on the mat and the dog ran to the park to play in the sun."] * 40)
    dense = " ".join([f"In 19{i:02d}, costs rose 4.{i}% (to $1,2{i:02d}); wages fell." for i in range(40)])
    assert target_chars(simple, limits) == limits.simple_chars
    assert target_chars(dense, limits) == limits.dense_chars
    assert target_chars("A plain sentence, with ordinary words in it, nothing special here.", limits) == limits.default_chars
    simple_sizes = [len(chunk) for chunk in chunk_text(simple, limits)]
    dense_sizes = [len(chunk) for chunk in chunk_text(dense, limits)]
    print(f"[chunking] simple chunk sizes {simple_sizes}")
    print(f"[chunking] dense chunk sizes {dense_sizes}")
    assert max(dense_sizes) <= limits.dense_chars
    assert max(simple_sizes) <= limits.simple_chars
    assert sum(simple_sizes) / len(simple_sizes) > 1.4 * sum(dense_sizes) / len(dense_sizes)


def test_default_mel_bound_caps_chunk_length():
    limits = ChunkLimits()
    cap = limits.max_expected_mel_tokens() / MEL_TOKENS_PER_SECOND * limits.chars_per_second
    chunks = chunk_text(" ".join(["The cat sat on the mat and the dog ran to the park to play."] * 30), limits)
    print(f"[chunking] mel cap {cap:.0f} chars, chunk sizes {[len(c) for c in chunks]}")
    assert max(map(len, chunks)) <= cap


def test_long_sentence_splits_at_clauses_then_words():
    limits = ChunkLimits()
    clauses = "; ".join(f"the {i}th clause goes on for a little while" for i in range(1, 30))
    chunks = chunk_text(f"Listen: {clauses}.", limits)
    assert len(chunks) > 1
    # Every chunk but the last ends where a clause ended.
    assert all(chunk.endswith((";", ":")) for chunk in chunks[:-1]), chunks
    assert_within_bounds(chunks, limits)

    no_punctuation = " ".join(["word"] * 400) + "."
    chunks = chunk_text(no_punctuation, limits)
    assert len(chunks) > 1
    assert all(set(chunk.split()) <= {"word", "word."} for chunk in chunks)
    assert_within_bounds(chunks, limits)


def test_a_word_too_long_to_speak_is_cut_into_bounded_pieces():
    # Refusing it would stop the whole book; it is read in pieces instead (tests/test_fuzz.py has more).
    chunks = chunk_text("x" * 2000, ChunkLimits())
    assert "".join(chunks) == "x" * 2000 and len(chunks) > 1
    assert_within_bounds(chunks, ChunkLimits())


def test_tiny_mel_budget_keeps_words_whole():
    # Smoke runs ask for very few mel tokens; a word longer than that budget still goes, alone.
    limits = ChunkLimits(max_mel_tokens=40)
    chunks = chunk_text("Oil cost $4.50 a can that winter, said Dr. Merriweather.", limits)
    print(f"[chunking] max_mel_tokens=40: {chunks}")
    assert "$4.50" in chunks
    assert " ".join(chunks).split() == "Oil cost $4.50 a can that winter, said Dr. Merriweather.".split()
    assert all(text_tokens(chunk) <= limits.max_text_tokens for chunk in chunks)


def test_chunk_book_pauses_indices_and_titles():
    book = Book(
        title="T",
        chapters=(
            Chapter(title="", paragraphs=("Opening line.",)),
            Chapter(title="Chapter 1: Home", paragraphs=("First paragraph. " * 30, "Second paragraph.")),
        ),
    )
    chunks = chunk_book(book)
    assert [c.chapter for c in chunks][0] == 0 and chunks[0].pause_after == "chapter"
    second = [c for c in chunks if c.chapter == 1]
    assert second[0].text == "Chapter 1: Home." and second[0].pause_after == "paragraph"
    assert [c.index for c in second] == list(range(len(second)))
    assert [c.pause_after for c in second[1:]] == ["sentence"] * (len(second) - 3) + ["paragraph", "chapter"]
    without_titles = chunk_book(book, announce_titles=False)
    words = [w for c in without_titles for w in c.text.split()]
    expected = [w for ch in book.chapters for p in ch.paragraphs for w in normalise_text(p).split()]
    assert words == expected
