"""`tutortoietts say`: speak a text now, streamed as it is synthesized, to a wav, raw PCM on stdout or the speakers."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterable, Iterator, Optional

import numpy as np
import typer

from tutortoietts.commands.options import Device, ModelsDir, Precision, Preset, Seed
from tutortoietts.engine.limits import SAMPLE_RATE  # the engine's output, the rate of every output here
from tutortoietts.errors import UserError

DEFAULT_PRESET = "realtime"
# Silence between chunks, as generate leaves it (stitch.PAUSE_SECONDS): within a paragraph, after one.
SENTENCE_PAUSE, PARAGRAPH_PAUSE = 0.35, 0.8


# ---------------------------------------------------------------------------------------------
# Text in: the argument, or stdin paragraph by paragraph (so speech starts before stdin ends).
# ---------------------------------------------------------------------------------------------


def paragraphs(text: str | None, stdin=None) -> Iterator[str]:
    """Paragraphs (blank-line separated) of `text`, or of stdin as they arrive when text is None or "-"."""
    if text is not None and text != "-":
        yield from (part for part in text.replace("\r\n", "\n").split("\n\n") if part.strip())
        return
    stdin = stdin if stdin is not None else sys.stdin
    lines: list[str] = []
    for line in stdin:
        if line.strip():
            lines.append(line)
        elif lines:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


# ---------------------------------------------------------------------------------------------
# Audio out.
# ---------------------------------------------------------------------------------------------


def pcm16(samples) -> bytes:
    """float samples in [-1, 1] -> little-endian signed 16-bit PCM."""
    values = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return np.round(values * 32767).astype("<i2").tobytes()


class WavSink:
    """A 16-bit mono wav, written piece by piece under a temporary name and renamed when whole."""

    def __init__(self, path: Path):
        import soundfile

        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        try:
            self.file = soundfile.SoundFile(self.partial, "w", SAMPLE_RATE, 1, subtype="PCM_16", format="WAV")
        except (OSError, RuntimeError) as error:
            raise UserError(f"cannot write {self.path}: {getattr(error, 'strerror', None) or error}") from None

    def write(self, samples) -> None:
        self.file.write(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0))

    def close(self, complete: bool) -> None:
        self.file.close()
        if complete:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


class PcmSink:
    """Raw PCM on stdout (s16le, mono, 24 kHz), flushed piece by piece for a player reading the pipe."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout.buffer

    def write(self, samples) -> None:
        self.stream.write(pcm16(samples))
        self.stream.flush()

    def close(self, complete: bool) -> None:
        self.stream.flush()


class PlaySink:
    """The default output device, through sounddevice (PortAudio); one clear line when there is none."""

    def __init__(self):
        try:
            import sounddevice
        except ImportError:
            raise UserError("--play needs the sounddevice package: pip install 'tutortoietts[play]' "
                            "(or write a file with --out FILE.wav, or raw PCM with --out -)") from None
        except OSError as error:  # the package is there, the PortAudio library is not
            raise UserError(f"--play: {error} (install it: apt-get install libportaudio2); or use --out FILE.wav "
                            "or --out -") from None
        try:
            sounddevice.query_devices(kind="output")
            self.stream = sounddevice.OutputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32")
            self.stream.start()
        except Exception as error:  # no device, no default device, a busy one: PortAudioError or ValueError
            reason = " ".join(str(error).split()) or type(error).__name__
            raise UserError(f"--play: no audio output device is available here ({reason}); "
                            "use --out FILE.wav or --out -") from None

    def write(self, samples) -> None:
        self.stream.write(np.asarray(samples, dtype=np.float32).reshape(-1, 1))  # blocks while the buffer is full

    def close(self, complete: bool) -> None:
        if complete:
            self.stream.stop()  # waits until what was written has been played
        else:
            self.stream.abort()
        self.stream.close()


# ---------------------------------------------------------------------------------------------
# Speaking: the engine, the voice and the caches as generate uses them.
# ---------------------------------------------------------------------------------------------


@dataclass
class SayReport:
    """What a run did, for the stderr summary (seconds are wall-clock)."""

    load_seconds: float = 0.0  # engine and voice, before any synthesis
    first_audio: float | None = None  # from the start of synthesis to the first samples out
    last_audio: float = 0.0  # from the start of synthesis to the last samples out
    audio_seconds: float = 0.0  # speech and pauses written
    chunks: int = 0
    from_cache: dict[str, int] = field(default_factory=lambda: {"audio": 0, "ar": 0})

    @property
    def real_time_factor(self) -> float | None:
        return self.last_audio / self.audio_seconds if self.audio_seconds > 0 else None


class Speaker:
    """Chunks of text in, audio pieces out: the audio cache, else the AR cache and the audio stage,
    else the engine, streamed when the decoder is hifi. Keys are generate's, so the two share caches."""

    def __init__(self, voice: str, preset: str, overrides: dict, models_dir, device: str, precision: str | None,
                 seed: int, cache_dir=None):
        from tutortoietts.cache import Cache
        from tutortoietts.render import concrete_precision, hifi_weights, resolve_weights
        from tutortoietts.settings import load_preset
        from tutortoietts.voices import find_voice, voice_fingerprint

        if precision is not None:
            overrides = {**overrides, "precision": precision}
        self.settings = concrete_precision(load_preset(preset, **overrides), device)
        self.voice = find_voice(voice)
        self.seed, self.device = seed, device
        self.voice_fp = voice_fingerprint(self.voice, seed)
        self.models_dir, self.weights_fp = resolve_weights(models_dir)
        self.decoder_fp = hifi_weights(self.models_dir) if self.settings.decoder == "hifi" else None
        self.cache = Cache(cache_dir)
        self.tts = None
        self.latents = None

    def load(self) -> None:
        """The engine and the voice's latents (from the cache when this voice met these weights before)."""
        from tutortoietts.cache import voice_key
        from tutortoietts.engine.pipeline import Tortoise, VoiceLatents
        from tutortoietts.voices import load_voice_clips

        self.tts = Tortoise.load(self.models_dir, self.device, self.settings.precision)
        self.chunks("Ready.")  # the sentence splitter and tokenizer load on first use: here, not in the first audio
        if self.voice.is_random:
            self.latents = self.tts.random_voice(self.seed)
            return
        key = voice_key(self.voice_fp, self.weights_fp)
        cached = self.cache.get_voice_latents(key)
        if cached is not None:
            self.latents = VoiceLatents(cached["autoregressive"], cached["diffusion"])
        else:
            self.latents = self.tts.voice_latents(load_voice_clips(self.voice))
            self.cache.put_voice_latents(key, self.latents.autoregressive, self.latents.diffusion, self.weights_fp)

    def chunks(self, paragraph: str) -> list[str]:
        """A paragraph as generate chunks it (whole sentences within the engine's bounds)."""
        from tutortoietts.chunking import ChunkLimits, chunk_text

        return chunk_text(paragraph, ChunkLimits(max_mel_tokens=self.settings.max_mel_tokens))

    def speak(self, text: str, report: SayReport) -> Iterator:
        """One chunk's audio as float32 pieces: from the audio cache, the AR cache, or the engine."""
        import torch

        from tutortoietts.cache import ar_key, audio_key
        from tutortoietts.jobs import chunk_seed

        seed = chunk_seed(self.seed, text)
        ar = ar_key(text, self.voice_fp, self.settings, seed, self.weights_fp)
        key = audio_key(ar, self.settings, self.decoder_fp)
        cached = self.cache.get_audio(key)
        if cached is not None:
            report.from_cache["audio"] += 1
            yield cached[0]
            return
        result = self.cache.get_ar(ar)
        if result is not None:
            report.from_cache["ar"] += 1
            samples = self.tts.audio_stage(result, self.latents, self.settings, seed).samples
            yield samples
        elif self.settings.decoder == "hifi":
            stream = self.tts.stream(text, self.latents, self.settings, seed)
            pieces = []
            for piece in stream:
                pieces.append(piece)
                yield piece
            samples = torch.cat(pieces)
            self.cache.put_ar(ar, stream.result, self.weights_fp)
        else:
            result = self.tts.autoregressive_stage(text, self.latents, self.settings, seed)
            samples = self.tts.audio_stage(result, self.latents, self.settings, seed).samples
            yield samples
            self.cache.put_ar(ar, result, self.weights_fp)
        self.cache.put_audio(key, samples, SAMPLE_RATE, self.weights_fp)

    def close(self) -> None:
        self.cache.close()


def speak_all(speaker: Speaker, texts: Iterable[str], sinks: list, report: SayReport, started: float) -> None:
    """Every paragraph's chunks through the speaker into every sink, pauses between them; `started`
    is the perf_counter time synthesis began (the report's times count from it)."""

    def out(samples) -> None:
        now = time.perf_counter() - started
        if report.first_audio is None and len(samples):
            report.first_audio = now
        for sink in sinks:
            sink.write(samples)
        report.audio_seconds += len(samples) / SAMPLE_RATE
        report.last_audio = time.perf_counter() - started

    first = True
    for paragraph in texts:
        for index, chunk in enumerate(speaker.chunks(paragraph)):
            if not first:
                out(np.zeros(int((SENTENCE_PAUSE if index else PARAGRAPH_PAUSE) * SAMPLE_RATE), dtype=np.float32))
            first = False
            for piece in speaker.speak(chunk, report):
                out(np.asarray(piece, dtype=np.float32))
            report.chunks += 1
    if report.chunks == 0:
        raise UserError("nothing to say: the text is empty")


def summary(report: SayReport) -> str:
    first = f"{report.first_audio:.2f} s" if report.first_audio is not None else "-"
    rtf = f"{report.real_time_factor:.2f}" if report.real_time_factor is not None else "-"
    cached = ", ".join(f"{n} from the {tier} cache" for tier, n in report.from_cache.items() if n)
    return (f"first audio after {first}; {report.audio_seconds:.2f} s of audio in {report.last_audio:.2f} s: RTF {rtf} "
            f"({report.chunks} chunk{'s' * (report.chunks != 1)}{', ' + cached if cached else ''}; "
            f"engine and voice loaded in {report.load_seconds:.2f} s)")


def say(
    text: Annotated[Optional[str], typer.Argument(help="What to say. Omit it (or give -) to read stdin, paragraph by paragraph.")] = None,
    voice: Annotated[Optional[str], typer.Option("--voice", "-v", help="Voice name (see `tutortoietts voices`), a folder or file of clips, or 'random'.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="A .wav file to write, or - for raw PCM on stdout (s16le, mono, 24 kHz).")] = None,
    play: Annotated[bool, typer.Option("--play", help="Play through the default output device as it is made (needs sounddevice).")] = False,
    preset: Preset = DEFAULT_PRESET,
    models_dir: ModelsDir = None,
    device: Device = "auto",
    precision: Precision = None,
    seed: Seed = 0,
    settings: Annotated[Optional[list[str]], typer.Option("--set", help="Override one preset value, key=value; repeatable.")] = None,
) -> None:
    """Speak a text now: streamed as it is synthesized (hifi decoder presets: realtime, fast_hifi).

    Prints the time to the first audio and the real-time factor on stderr.
    """
    from tutortoietts.commands.generate import parse_set_options

    if voice is None:
        raise UserError("choose a voice with --voice NAME (see `tutortoietts voices`), a folder of clips, or 'random'")
    if out is None and not play:
        raise UserError("say where the audio goes: --out FILE.wav, --out - (raw PCM on stdout) or --play")
    if out is not None and out != "-" and not out.lower().endswith(".wav"):
        raise UserError(f"--out {out!r}: give a .wav file name, or - for raw PCM on stdout")
    began = time.perf_counter()
    speaker = Speaker(voice, preset, parse_set_options(settings or []), models_dir, device, precision, seed)
    sinks: list = []
    complete = False
    try:
        if play:
            sinks.append(PlaySink())
        if out == "-":
            sinks.append(PcmSink())
        elif out is not None:
            sinks.append(WavSink(Path(out)))
        speaker.load()
        report = SayReport(load_seconds=time.perf_counter() - began)
        speak_all(speaker, paragraphs(text), sinks, report, time.perf_counter())
        complete = True
    finally:
        for sink in sinks:
            sink.close(complete)
        speaker.close()
    print(summary(report), file=sys.stderr)
    if out not in (None, "-"):
        print(out)  # the file; stdout carries nothing else (as generate's book path)
