"""Offline speech recognition for the quality gate: pocketsphinx (its English model ships in its wheel),
or a local faster-whisper model the user points at. Nothing is ever downloaded.

pocketsphinx decoding freely with its general language model heard 10-30% of the words of clean
espeak-ng speech (measured while building this), too little to tell a right sentence from a wrong
one. So it decodes against a language model built from the chunk's own words (pocketsphinx's
ArpaBoLM) and a dictionary of just those words: the audio of the right text is then read back
nearly word for word, while other speech yields few of the text's words. What it measures is
verification, "are these words in this audio", which is the question the gate asks.
"""

from __future__ import annotations

import functools
import io
import shutil
import tempfile
from pathlib import Path

from tutortoietts.errors import UserError


def spoken_words(text: str) -> list[str]:
    """The words the engine speaks: its own cleaners (numbers, abbreviations spelled out), lower case."""
    import re

    from tutortoietts.engine.tokenizer import clean

    return re.findall(r"[a-z]+(?:'[a-z]+)?", clean(text).lower())


def dictionary_path() -> Path | None:
    """pocketsphinx's CMU pronouncing dictionary, or None where pocketsphinx is not installed."""
    try:
        import pocketsphinx
    except ImportError:
        return None
    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _dictionary_lines() -> dict[str, list[str]]:
    """Word -> its dictionary lines (alternative pronunciations included)."""
    path = dictionary_path()
    lines: dict[str, list[str]] = {}
    if path is None:
        return lines
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            word = line.split(" ", 1)[0]
            lines.setdefault(word.split("(", 1)[0], []).append(line if line.endswith("\n") else line + "\n")
    return lines


def word_scores(reference: list[str], heard: list[str]) -> dict:
    """WER and recall of `heard` against `reference` (jiwer's alignment)."""
    import jiwer

    if not reference:
        return {"asr_words": 0}
    result = jiwer.process_words(" ".join(reference), " ".join(heard))
    return {
        "asr_words": len(reference),
        "wer": round(result.wer, 4),
        "asr_recall": round(result.hits / len(reference), 4),  # share of the text's words heard, in order
        "asr_text": " ".join(heard),
    }


class PocketsphinxRecogniser:
    """pocketsphinx's English acoustic model, decoding each chunk against its own words."""

    name = "pocketsphinx"

    def __init__(self):
        try:
            import pocketsphinx  # noqa: F401
        except ImportError:
            raise UserError("the speech-recognition check needs pocketsphinx: pip install pocketsphinx") from None
        self._workdir = Path(tempfile.mkdtemp(prefix="tutortoietts-asr-"))

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __del__(self):
        self.close()

    def score(self, wave16k, words: list[str]) -> dict:
        """Figures for 16 kHz float samples of a chunk whose text speaks `words`."""
        import numpy as np
        from pocketsphinx import Decoder
        from pocketsphinx.lm import ArpaBoLM

        lines = _dictionary_lines()
        known = [word for word in words if word in lines]
        figures = {"asr_unknown": len(words) - len(known)}
        if not known:
            return {**figures, "asr_words": 0}
        dictionary = self._workdir / "chunk.dict"
        dictionary.write_text("".join(line for word in sorted(set(known)) for line in lines[word]), encoding="utf-8")
        model = ArpaBoLM(text=" ".join(known) + "\n", add_start=True)
        model.compute()
        arpa = io.StringIO()
        model.write(arpa)
        language_model = self._workdir / "chunk.arpa"
        language_model.write_text(arpa.getvalue(), encoding="utf-8")
        # One forward pass: the second (flat) pass and the lattice's best path changed no verdict on
        # the test corpus and cost 40% of the time.
        decoder = Decoder(lm=str(language_model), dict=str(dictionary), loglevel="FATAL", fwdflat=False, bestpath=False)
        pcm = (np.clip(np.asarray(wave16k, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2").tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        heard = hypothesis.hypstr.split() if hypothesis is not None else []
        return {**figures, **word_scores(known, heard)}


class WhisperRecogniser:
    """A faster-whisper model from a local folder (`--asr-model PATH`); free decoding, all words checked."""

    def __init__(self, model_path: Path):
        model_path = Path(model_path).expanduser()
        if not model_path.is_dir():
            raise UserError(f"--asr-model must be a folder holding a faster-whisper (CTranslate2) model: {model_path}")
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise UserError("--asr-model needs faster-whisper: pip install faster-whisper") from None
        try:
            # A folder, and local_files_only: the model is never fetched from the network.
            self._model = WhisperModel(str(model_path), device="cpu", compute_type="int8", local_files_only=True)
        except Exception as error:
            raise UserError(f"cannot load the faster-whisper model in {model_path}: {error}") from None
        self.name = f"faster-whisper:{model_path.name}"

    def close(self) -> None:
        pass

    def score(self, wave16k, words: list[str]) -> dict:
        import numpy as np

        segments, _ = self._model.transcribe(np.asarray(wave16k, dtype=np.float32), language="en", beam_size=1)
        heard = spoken_words(" ".join(segment.text for segment in segments))
        return {"asr_unknown": 0, **word_scores(words, heard)}


def make_recogniser(enabled: bool, model_path: Path | None = None):
    """The recogniser a run asked for: faster-whisper from a path, pocketsphinx, or None (no ASR check)."""
    if model_path is not None:
        return WhisperRecogniser(model_path)
    if not enabled:
        return None
    return PocketsphinxRecogniser()
