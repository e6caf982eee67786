"""Pronunciation respellings (`--lexicon FILE.toml`): words or patterns -> how the narrator should say them.

    # book.lexicon.toml: a word (whole word, any case) = what to say instead
    Hermione = "Her-my-oh-nee"
    Nguyen = "Win"

    [regex]  # Python regular expressions, applied after the words, in file order
    '\\bSt\\.(?= [A-Z])' = "Saint"

The user's own lexicon ($TUTORTOIETTS_LEXICON, else ~/.config/tutortoietts/lexicon.toml) applies
to every book; a book's `--lexicon` is applied on top (its words win).

Respellings are applied to each chunk's text after the chunk boundaries are drawn on the text as
written, and before seeds and cache keys are computed: a respelling never moves a boundary, so
exactly the chunks that contain a changed word get new keys and are rendered again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tutortoietts.errors import UserError
from tutortoietts.paths import user_lexicon_path  # $TUTORTOIETTS_LEXICON, else $XDG_CONFIG_HOME/tutortoietts/lexicon.toml


@dataclass(frozen=True)
class Lexicon:
    """Word respellings (lower-case word -> respelling) and (pattern, respelling) rules."""

    words: tuple[tuple[str, str], ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()
    sources: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.words or self.patterns)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(repr((self.words, self.patterns)).encode()).hexdigest()[:16]

    def apply(self, text: str) -> str:
        """`text` with every respelling applied (words first, longest first, then the patterns)."""
        if self.words:
            table = dict(self.words)
            text = _word_pattern(self.words).sub(lambda match: table[match.group(0).lower()], text)
        for pattern, replacement in self.patterns:
            text = re.sub(pattern, replacement, text)
        return text

    def merged(self, other: "Lexicon") -> "Lexicon":
        """This lexicon with `other` on top: other's words replace ours, its patterns run after ours."""
        words = dict(self.words)
        words.update(other.words)
        return Lexicon(tuple(sorted(words.items())), self.patterns + other.patterns, self.sources + other.sources)


_PATTERNS: dict[tuple, re.Pattern] = {}


def _word_pattern(words: tuple[tuple[str, str], ...]) -> re.Pattern:
    """One alternation of every word, longest first, matched whole and in any case."""
    if words not in _PATTERNS:
        alternatives = sorted((word for word, _ in words), key=len, reverse=True)
        body = "|".join(re.escape(word) for word in alternatives)
        # Whole words; a possessive or contraction after one ("Hermione's") still matches.
        _PATTERNS[words] = re.compile(rf"(?<![\w'-])(?:{body})(?![\w-])", re.IGNORECASE)
    return _PATTERNS[words]


def read_lexicon(path: Path) -> Lexicon:
    """A lexicon file; every mistake in it is one line naming the file and the entry."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"lexicon not found: {path}")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"lexicon {path} is not valid TOML: {error}") from None
    words, patterns = {}, []
    for key, value in table.items():
        if key == "regex":
            if not isinstance(value, dict):
                raise UserError(f"lexicon {path}: [regex] must be a table of pattern = \"respelling\"")
            for pattern, replacement in value.items():
                _check_entry(path, pattern, replacement)
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise UserError(f"lexicon {path}: bad regex {pattern!r}: {error}") from None
                patterns.append((pattern, replacement))
            continue
        _check_entry(path, key, value)
        if not re.fullmatch(r"[\w'.-]+(?: [\w'.-]+)*", key):
            raise UserError(f"lexicon {path}: {key!r} is not a word (put patterns under [regex])")
        words[key.lower()] = value
    return Lexicon(tuple(sorted(words.items())), tuple(patterns), (str(path),))


def _check_entry(path: Path, key: str, value) -> None:
    if not isinstance(value, str):
        raise UserError(f"lexicon {path}: the respelling of {key!r} must be a string, got {type(value).__name__}")
    if not key.strip():
        raise UserError(f"lexicon {path}: an empty word or pattern")


def load_lexicon(book_lexicon: Path | None) -> Lexicon:
    """The user's lexicon (if that file exists) with the book's on top."""
    lexicon = Lexicon()
    user = user_lexicon_path()
    if user.is_file():
        lexicon = read_lexicon(user)
    if book_lexicon is not None:
        lexicon = lexicon.merged(read_lexicon(book_lexicon))
    return lexicon


def respell_chunks(chunks: list, lexicon: Lexicon, overrides: dict[str, str] | None = None) -> list:
    """Chunks with the lexicon applied to their text, and `overrides` ("chapter-index" -> text) replacing some.

    A respelled chunk must still fit one engine call; a lexicon that makes it too long is one line.
    """
    from tutortoietts.chunking import text_tokens
    from tutortoietts.engine.tokenizer import TEXT_TOKEN_LIMIT

    overrides = dict(overrides or {})
    changed = []
    for chunk in chunks:
        name = f"{chunk.chapter}-{chunk.index}"
        text = lexicon.apply(overrides.pop(name, chunk.text))  # a corrected text is respelled too
        if text != chunk.text:
            if not text.strip():
                raise UserError(f"chunk {name} would have nothing to say")
            if text_tokens(text) > TEXT_TOKEN_LIMIT:
                raise UserError(f"chunk {name} is too long for one engine call after respelling "
                                f"({text_tokens(text)} tokens, at most {TEXT_TOKEN_LIMIT}): shorten the respelling or the text")
            chunk = dataclasses.replace(chunk, text=text)
        changed.append(chunk)
    if overrides:
        raise UserError(f"no chunk named {', '.join(sorted(overrides))} in this book (names as `tutortoietts qa` prints them)")
    return changed
