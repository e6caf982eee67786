"""Text -> BPE ids in Tortoise's vocabulary, after the English cleaners its tokenizer applies."""

from __future__ import annotations

import functools
import importlib.resources
import re

from tokenizers import Tokenizer as BpeModel
from unidecode import unidecode

# Special tokens of tortoise/data/tokenizer.json.
STOP_ID = 0
UNK_ID = 1
SPACE_ID = 2
SPACE_TOKEN = "[SPACE]"
# The reference's tts() pads the ids with one token and refuses anything not shorter than 400
# after that, so the longest text it speaks is 398 ids; we keep its limit.
TEXT_TOKEN_LIMIT = 398

# Abbreviation -> spoken word. Applied one after another in this order, exactly as the
# reference does: a replacement can remove the word boundary a later pattern needs
# ("co.lt." -> "companylt."), so one combined regex would not give the same text.
ABBREVIATIONS = (
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
    ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
    ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
    ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
)
ABBREVIATION_PATTERNS = tuple((re.compile(rf"\b{short}\.", re.IGNORECASE), long) for short, long in ABBREVIATIONS)

DIGITS_WITH_COMMAS = re.compile(r"([0-9][0-9,]+[0-9])")
DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
DECIMAL = re.compile(r"([0-9]+\.[0-9]+)")
ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)")
INTEGER = re.compile(r"[0-9]+")
WHITESPACE = re.compile(r"\s+")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")



@functools.lru_cache(maxsize=1)
def _inflect():
    # Imported on the first number: inflect's import alone takes seconds (typeguard instruments
    # it), which every CLI start would otherwise pay, number or not.
    import inflect

    return inflect.engine()


# inflect spells numbers up to 10^33 (36 digits with some slack); longer runs are read digit by digit.
MAX_SPOKEN_DIGITS = 36


def _number_words(value, **options) -> str:
    """inflect's spelling; numbers beyond its range (over ~10^33) are read digit by digit.

    The reference raises there; a book may contain such a string (an ISBN run together,
    a long serial), and one odd token should not stop a render.
    """
    import inflect

    if len(str(value)) > MAX_SPOKEN_DIGITS:
        return _digit_by_digit(str(value))
    try:
        return _inflect().number_to_words(value, **options)
    except inflect.NumOutOfRangeError:
        return _digit_by_digit(str(value))


def _digit_by_digit(text: str) -> str:
    return " ".join(DIGIT_NAMES[int(d)] for d in text if d.isdigit())


def _spell_dollars(match: re.Match) -> str:
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2 or len(amount) > MAX_SPOKEN_DIGITS:  # "1.2.3": not money we can read; keep the digits, say the unit
        return amount + " dollars"
    # A stray comma ("$,5", "$1,.5") made the reference's int() raise; we just drop it.
    dollars = int(parts[0].replace(",", "") or 0)
    cents = int(parts[1].replace(",", "") or 0) if len(parts) > 1 else 0
    dollar_unit = "dollar" if dollars == 1 else "dollars"
    cent_unit = "cent" if cents == 1 else "cents"
    if dollars and cents:
        return f"{dollars} {dollar_unit}, {cents} {cent_unit}"
    if dollars:
        return f"{dollars} {dollar_unit}"
    if cents:
        return f"{cents} {cent_unit}"
    return "zero dollars"


def _spell_integer(match: re.Match) -> str:
    if len(match.group(0)) > MAX_SPOKEN_DIGITS:
        return _digit_by_digit(match.group(0))  # and int() would refuse over 4300 digits
    number = int(match.group(0))
    # Years between 1000 and 3000 are read the way people say them: "nineteen eighty-four".
    if 1000 < number < 3000:
        if number == 2000:
            return "two thousand"
        if 2000 < number < 2010:
            return "two thousand " + _number_words(number % 100)
        if number % 100 == 0:
            return _number_words(number // 100) + " hundred"
        return _number_words(number, andword="", zero="oh", group=2).replace(", ", " ")
    return _number_words(number, andword="")


def expand_numbers(text: str) -> str:
    """Digits -> words: thousands separators, dollars, decimals, ordinals, then plain integers.

    The reference also has a pound-sign rule, but it runs after unidecode has already turned
    "£" into "PS", so it can never fire; leaving it out changes nothing ("£3" -> "psthree").
    """
    text = DIGITS_WITH_COMMAS.sub(lambda m: m.group(1).replace(",", ""), text)
    text = DOLLARS.sub(_spell_dollars, text)
    text = DECIMAL.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = ORDINAL.sub(lambda m: _number_words(m.group(0)), text)
    return INTEGER.sub(_spell_integer, text)


def expand_abbreviations(text: str) -> str:
    for pattern, spoken in ABBREVIATION_PATTERNS:
        text = pattern.sub(spoken, text)
    return text


def clean(text: str) -> str:
    """The reference's english_cleaners: ASCII, lower case, numbers and abbreviations spelled out,
    whitespace runs collapsed, double quotes dropped. The chunker measures text with this."""
    text = unidecode(text).lower()
    text = expand_numbers(text)
    text = expand_abbreviations(text)
    text = WHITESPACE.sub(" ", text)
    return text.replace('"', "")


@functools.lru_cache(maxsize=1)
def _bpe_model() -> BpeModel:
    # The vocabulary ships with the tortoise-tts package; we read only its data file.
    vocabulary = importlib.resources.files("tortoise") / "data" / "tokenizer.json"
    return BpeModel.from_str(vocabulary.read_text(encoding="utf-8"))


class Tokenizer:
    """Tortoise's text tokenizer: `encode` gives the ids the reference's VoiceBpeTokenizer gives."""

    def __init__(self) -> None:
        self.model = _bpe_model()

    def encode(self, text: str) -> list[int]:
        # Spaces are their own token; the BPE's whitespace pre-tokenizer would otherwise drop them.
        return self.model.encode(clean(text).replace(" ", SPACE_TOKEN)).ids

    def decode(self, ids) -> str:
        """Ids -> cleaned text (spaces restored, stop/unknown tokens dropped)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        text = self.model.decode(list(ids), skip_special_tokens=False).replace(" ", "")
        return text.replace(SPACE_TOKEN, " ").replace("[STOP]", "").replace("[UNK]", "")

    def count(self, text: str) -> int:
        """Number of text tokens (without the end padding the networks add)."""
        return len(self.encode(text))
