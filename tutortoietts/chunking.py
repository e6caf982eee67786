"""Text -> engine-sized chunks: normalisation, Punkt sentences, complexity-aware packing within model bounds."""

from __future__ import annotations

import bisect
import functools
import math
import re
from dataclasses import dataclass

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

from tutortoietts.engine.limits import CONDITIONING_SAMPLE_RATE, SAMPLES_PER_CODE
from tutortoietts.engine.tokenizer import TEXT_TOKEN_LIMIT, Tokenizer, clean
from tutortoietts.manuscript import Book

# Abbreviations that end in a period but almost never end a sentence (titles before names,
# "St." for saint/street, Latin shorthands). Punkt wants them lower-case, without the final dot.
# "No." and "etc." are left out on purpose: both often do end sentences.
ABBREVIATIONS = (
    "mr", "mrs", "ms", "messrs", "mme", "mlle", "dr", "drs", "prof", "st", "ste", "mt", "ft",
    "jr", "sr", "rev", "hon", "gen", "col", "capt", "lt", "sgt", "cpl", "adm", "gov", "sen",
    "rep", "pres", "supt", "insp", "det", "vs", "cf", "e.g", "i.e", "viz", "approx",
)

# One mel code per 1024 samples of 22.05 kHz audio (DVAE: mel hop 256, downsampled 4x).
MEL_TOKENS_PER_SECOND = CONDITIONING_SAMPLE_RATE / SAMPLES_PER_CODE

PUNCTUATION = re.compile(r"[.!?,;:]")
CLAUSE_END = re.compile(r"(?<=[;:,])\s+|\s+(?=-\s)")  # after ; : , and before a spoken dash " - "
WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class ChunkLimits:
    """Hard bounds every chunk keeps and the soft target sizes it is packed towards."""

    max_text_tokens: int = TEXT_TOKEN_LIMIT  # tokenizer ids one engine call accepts (the reference's limit)
    max_mel_tokens: int = 500  # generation length the render asks for (tortoise's tts() default)
    mel_budget: float = 0.8  # expected speech must fill at most this share of max_mel_tokens
    chars_per_second: float = 15.0  # speaking rate of cleaned text, a typical narrator's ~150 wpm
    # Target sizes (characters) from the optimisation directive's adaptive chunking: long
    # chunks amortise per-call cost, short ones keep dense text (numbers, lists) stable.
    simple_chars: int = 450
    default_chars: int = 350
    dense_chars: int = 250

    def max_expected_mel_tokens(self) -> float:
        return self.mel_budget * self.max_mel_tokens


@dataclass(frozen=True)
class Chunk:
    chapter: int  # index into Book.chapters (0-based)
    index: int  # position within the chapter (0-based)
    text: str  # normalised text sent to the engine
    pause_after: str  # "sentence" | "paragraph" | "chapter": the silence stitch puts after it


# ---------------------------------------------------------------------------------------------
# Normalisation: typography to plain ASCII punctuation, every letter and digit kept as it was
# (the engine's cleaners expand numbers and transliterate again, so the text stays readable).

TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u00ab": '"', "\u00bb": '"', "\u2039": "'", "\u203a": "'",
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2212": "-",
        "\u2026": "...", "\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u200a": " ", "\t": " ",
        "\u200b": None, "\u200c": None, "\u200d": None, "\ufeff": None, "\u00ad": None,
    }
)
LONG_DASH = re.compile(r"\s*(?:[\u2014\u2015]+|--+)\s*")


def normalise_text(text: str) -> str:
    """Smart quotes, dashes, ellipses and odd spaces made plain; letters and digits untouched.

    A long dash becomes " - " so it reads as a pause and stays a clause boundary for splitting.
    """
    text = text.translate(TYPOGRAPHY)
    text = LONG_DASH.sub(" - ", text)
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------
# Measures: token count with the engine's own tokenizer, speech length from the cleaned text.


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    return Tokenizer()  # reads the BPE vocabulary: once


def text_tokens(text: str) -> int:
    """Tokenizer ids of the chunk: what the engine's text limit counts."""
    return len(_tokenizer().encode(text))


def expected_mel_tokens(text: str, limits: ChunkLimits) -> float:
    """Expected AR length: spoken characters (numbers spelled out) at the narrator's rate."""
    seconds = len(clean(text)) / limits.chars_per_second
    return seconds * MEL_TOKENS_PER_SECOND


def within_bounds(text: str, limits: ChunkLimits) -> bool:
    return text_tokens(text) <= limits.max_text_tokens and expected_mel_tokens(text, limits) <= limits.max_expected_mel_tokens()


def has_speech(text: str) -> bool:
    """A letter or a digit once cleaned: something to read. The engine refuses text that cleans to
    nothing (emoji, symbols the cleaners delete); punctuation alone ("...", "* * *", "---") it would
    take, and the model would make up sounds for it."""
    return any(character.isalnum() for character in clean(text))


@functools.lru_cache(maxsize=65536)
def word_measure(word: str) -> tuple[int, int, int]:
    """(tokenizer ids, cleaned characters, spaces at the cleaned word's two ends) of one word.

    Cached: books repeat their words, and the cleaners spell numbers slowly (inflect, ~0.2 ms each).
    """
    cleaned = clean(word)
    edge_spaces = cleaned.startswith(" ") + (len(cleaned) > 1 and cleaned.endswith(" "))
    return text_tokens(word), len(cleaned), edge_spaces


@dataclass(frozen=True)
class Measure:
    """Bounds of text_tokens(text) and len(clean(text)), from the text's words measured one by one.

    The cleaners and the BPE never look across a space (unidecode maps characters alone, the
    number and abbreviation patterns hold no space, the pre-tokenizer splits at [SPACE]), so
    joined words measure their parts plus one space per join, less the spaces that collapse:
    the joins and the words' own end spaces at most. tests/test_fuzz.py checks both bounds.
    """

    least_tokens: int
    most_tokens: int
    least_chars: int
    most_chars: int

    def surely_fits(self, limits: ChunkLimits) -> bool:
        return surely_within_bounds(self.most_tokens, self.most_chars, limits)

    def surely_too_big(self, limits: ChunkLimits) -> bool:
        return not surely_within_bounds(self.least_tokens, self.least_chars, limits)


def measure(text: str) -> Measure:
    words = text.split()
    joins = max(len(words) - 1, 0)
    least_tokens, most_tokens, least_chars, most_chars = 0, joins, 0, joins
    for word in words:
        tokens, chars, edge_spaces = word_measure(word)
        least_tokens += tokens - edge_spaces
        most_tokens += tokens
        least_chars += chars - edge_spaces
        most_chars += chars
    return Measure(least_tokens, most_tokens, least_chars, most_chars)


def surely_within_bounds(tokens: int, chars: int, limits: ChunkLimits) -> bool:
    """within_bounds for a text of at most these tokens and cleaned characters."""
    mel = chars / limits.chars_per_second * MEL_TOKENS_PER_SECOND  # expected_mel_tokens' formula
    return tokens <= limits.max_text_tokens and mel <= limits.max_expected_mel_tokens()


def target_chars(text: str, limits: ChunkLimits) -> int:
    """Complexity-aware size: numbers, dense punctuation or long words -> smaller chunks."""
    words = [re.sub(r"\W", "", word) for word in text.split()]
    words = [word for word in words if word] or [""]
    mean_word_length = sum(map(len, words)) / len(words)
    # Density rather than the directive's absolute count (> 5 marks), which any long text passes.
    marks_per_100_chars = 100 * len(PUNCTUATION.findall(text)) / max(len(text), 1)
    if re.search(r"\d", text) or marks_per_100_chars > 5 or mean_word_length >= 6:
        return limits.dense_chars
    if mean_word_length < 4.5 and marks_per_100_chars <= 3:
        return limits.simple_chars
    return limits.default_chars


# ---------------------------------------------------------------------------------------------
# Sentences: Punkt, untrained, with the abbreviation list. Not trained on the manuscript on
# purpose: one edit elsewhere in the book would then move boundaries (and cache keys) everywhere.


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer() -> PunktSentenceTokenizer:
    parameters = PunktParameters()
    parameters.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(parameters)


def split_sentences(text: str) -> list[str]:
    """Sentences as slices of text; a piece starting in lower case (after “Really?” she said) rejoins."""
    spans: list[list[int]] = []  # [start, end] into text, so joins keep the original spacing
    for start, end in _sentence_tokenizer().span_tokenize(text):
        sentence = text[start:end]
        if not sentence.strip():
            continue
        first_letter = re.search(r"[^\W\d_]", sentence)
        continues = first_letter and first_letter.start() <= 2 and sentence[first_letter.start()].islower()
        # Punkt may cut inside a word ("p.m.!"); a boundary must fall on whitespace.
        inside_word = start > 0 and not text[start - 1].isspace()
        if spans and (continues or inside_word):
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [text[start:end].strip() for start, end in spans]


# ---------------------------------------------------------------------------------------------
# Packing


def fits(text: str, max_chars: int, limits: ChunkLimits) -> bool:
    return len(text) <= max_chars and within_bounds(text, limits)


def split_long(sentence: str, max_chars: int, limits: ChunkLimits) -> list[str]:
    """A sentence too long for one chunk: clause boundaries first, then word boundaries.

    Mid-word only for a word past the text window (see cut_word); past the size target or the
    (estimated) mel budget a word merely runs long, so it goes alone.
    """
    if fits(sentence, max_chars, limits):
        return [sentence]
    clauses = [clause for clause in CLAUSE_END.split(sentence) if clause]
    if len(clauses) > 1:
        pieces = [piece for clause in clauses for piece in split_long(clause, max_chars, limits)]
        return pack(pieces, [max_chars] * len(pieces), limits)
    words = [piece for word in WORD.findall(sentence) for piece in cut_word(word, limits)]
    if len(sentence) > 20 * max_chars:
        # Thousands of words with no clause mark (a 5 MB line): pack between short phrases, not
        # every word, so packing weighs a few cut points per chunk. Nobody hears the evenness lost.
        words = phrases(words, max(1, max_chars // 16), limits)
    return pack(words, [max_chars] * len(words), limits)


def cut_word(word: str, limits: ChunkLimits) -> list[str]:
    """A "word" past the text window (a long URL, letters or digits without a space) in pieces.

    The engine cannot take it whole and refusing it would stop the book, so it is read in the
    longest prefixes within the bounds, one after another, each its own word. Characters with
    nothing to say (emoji) measure nothing, so they stay with the piece before them.
    """
    if measure(word).most_tokens <= limits.max_text_tokens:
        return [word]
    pieces = []
    while word:
        # Doubling, then bisection, for the longest prefix that fits: a few tokenizer calls per
        # piece on texts at most twice its length, so even megabytes of one word take linear time.
        # One character always goes, so the cut moves on: no character measures over 50 tokens
        # (a braille cell cleans to "[dtwelve million, ...]"), far under the text window.
        good, bad = 1, len(word) + 1
        while good < len(word):
            probe = min(2 * good, len(word))
            if not within_bounds(word[:probe], limits):
                bad = probe
                break
            good = probe
        while bad - good > 1:
            middle = (good + bad) // 2
            if within_bounds(word[:middle], limits):
                good = middle
            else:
                bad = middle
        pieces.append(word[:good])
        word = word[good:]
    return pieces


def phrases(words: list[str], max_chars: int, limits: ChunkLimits) -> list[str]:
    """Consecutive words joined up to max_chars characters, each phrase surely within the bounds."""
    result, current, length, tokens, chars = [], [], 0, 0, 0  # the current phrase's most tokens and chars
    for word in words:
        word_tokens, word_chars, _ = word_measure(word)
        if current and length + 1 + len(word) <= max_chars and surely_within_bounds(tokens + 1 + word_tokens, chars + 1 + word_chars, limits):
            current.append(word)
            length, tokens, chars = length + 1 + len(word), tokens + 1 + word_tokens, chars + 1 + word_chars
        else:
            if current:
                result.append(" ".join(current))
            current, length, tokens, chars = [word], len(word), word_tokens, word_chars
    if current:
        result.append(" ".join(current))
    return result


def pack(pieces: list[str], targets: list[int], limits: ChunkLimits) -> list[str]:
    """Join consecutive pieces into chunks of similar size, each within its target and the bounds.

    Fewest chunks first, then the most even sizes (least sum of squared lengths), by dynamic
    programming over the cut points: a paragraph of 1.1 targets becomes two halves rather
    than a full chunk and a scrap. Each piece already fits on its own (split_long saw to it).
    """
    count = len(pieces)
    widest = max(targets, default=0)
    offsets = [0]  # offsets[i]: length of " ".join(pieces[:i]) plus one
    # Running sums of the pieces' Measure fields (the "most" ones with a space per piece), so a
    # span's bounds are differences and the tokenizer runs only on spans whose bounds straddle a
    # limit, not on every candidate span.
    least_tokens, most_tokens, least_chars, most_chars = [0], [0], [0], [0]
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece) + 1)
        piece_bounds = measure(piece)
        least_tokens.append(least_tokens[-1] + piece_bounds.least_tokens)
        most_tokens.append(most_tokens[-1] + piece_bounds.most_tokens + 1)
        least_chars.append(least_chars[-1] + piece_bounds.least_chars)
        most_chars.append(most_chars[-1] + piece_bounds.most_chars + 1)

    def span_fits(start: int, end: int) -> bool:
        if end - start == 1:
            return True
        if offsets[end] - offsets[start] - 1 > min(targets[start:end]):
            return False
        bounds = Measure(
            least_tokens[end] - least_tokens[start], most_tokens[end] - most_tokens[start] - 1,
            least_chars[end] - least_chars[start], most_chars[end] - most_chars[start] - 1,
        )
        if bounds.surely_fits(limits):
            return True
        if bounds.surely_too_big(limits):
            return False
        return within_bounds(" ".join(pieces[start:end]), limits)

    # best[i]: (chunks, sum of squared lengths, start of the last chunk) for pieces[:i].
    best: list[tuple[float, float, int]] = [(0, 0, 0)] + [(math.inf, math.inf, 0)] * count
    for end in range(1, count + 1):
        # Fitting is monotone in the span (an earlier start only adds text), so binary-search the
        # earliest start that fits instead of trying every candidate.
        low = bisect.bisect_left(offsets, offsets[end] - 1 - widest, 0, end - 1)  # widest span by characters
        high = end - 1
        if span_fits(low, end):  # the usual case: the size target, not the bounds, decides
            high = low
        low += 1  # (when high == low the search below does nothing)
        while low < high:
            middle = (low + high) // 2
            if span_fits(middle, end):
                high = middle
            else:
                low = middle + 1
        for start in range(high, end):
            length = offsets[end] - offsets[start] - 1
            chunks_before, squares_before, _ = best[start]
            candidate = (chunks_before + 1, squares_before + length**2, start)
            if candidate[:2] < best[end][:2]:
                best[end] = candidate
    chunks: list[str] = []
    end = count
    while end > 0:
        start = best[end][2]
        chunks.append(" ".join(pieces[start:end]))
        end = start
    return chunks[::-1]


def effective_target(text: str, limits: ChunkLimits) -> int:
    """The complexity target, never beyond what the mel bound allows at the speaking rate."""
    mel_chars = limits.max_expected_mel_tokens() / MEL_TOKENS_PER_SECOND * limits.chars_per_second
    return max(1, min(target_chars(text, limits), int(mel_chars)))


def chunk_text(text: str, limits: ChunkLimits = ChunkLimits()) -> list[str]:
    """One paragraph (or any free text) -> normalised chunks of whole sentences within the bounds.

    A chunk with nothing to say (a line of emoji) is left out: the engine would refuse it and the
    render would end with that chunk failed, every run. Such characters beside words stay in.
    """
    text = normalise_text(text)
    if not text:
        return []
    pieces, targets = [], []
    for sentence in split_sentences(text):
        target = effective_target(sentence, limits)
        for piece in split_long(sentence, target, limits):
            pieces.append(piece)
            targets.append(target)
    return [chunk for chunk in pack(pieces, targets, limits) if has_speech(chunk)]


def chunk_book(book: Book, limits: ChunkLimits = ChunkLimits(), announce_titles: bool = True) -> list[Chunk]:
    """Every chapter's paragraphs as chunks; paragraphs never share a chunk, so their pauses stay.

    With announce_titles, a titled chapter opens with its title read as its own chunk.
    """
    chunks: list[Chunk] = []
    for chapter_index, chapter in enumerate(book.chapters):
        paragraphs = list(chapter.paragraphs)
        if announce_titles and chapter.title.strip():
            title = normalise_text(chapter.title)
            paragraphs.insert(0, title if title.endswith((".", "!", "?")) else f"{title}.")
        texts, pauses = [], []
        for paragraph in paragraphs:
            paragraph_chunks = chunk_text(paragraph, limits)
            texts.extend(paragraph_chunks)
            pauses.extend(["sentence"] * (len(paragraph_chunks) - 1) + ["paragraph"] * bool(paragraph_chunks))
        if pauses:
            pauses[-1] = "chapter"
        for index, (text, pause) in enumerate(zip(texts, pauses)):
            chunks.append(Chunk(chapter=chapter_index, index=index, text=text, pause_after=pause))
    return chunks
