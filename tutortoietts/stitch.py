"""Stitching and export: chunk clips -> chapters with pauses and fades -> mastering -> wav/mp3/m4b via
ffmpeg, tagged with mutagen, with subtitles timed to the chunks."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile

from tutortoietts.engine.limits import SAMPLE_RATE  # the vocoder's output rate
from tutortoietts.errors import UserError
from tutortoietts.ffmpeg import FFMPEG_MISSING, require_ffmpeg  # noqa: F401  (FFMPEG_MISSING: callers read it here)
from tutortoietts.subtitles import Cue, shifted, write_subtitles

# Silence after a chunk, by what ends there. A chapter's pause is split in half: one half opens
# its file and one half closes it, so per-chapter files and the whole book both hear 2 s.
PAUSE_SECONDS = {"sentence": 0.35, "paragraph": 0.8, "chapter": 2.0}
FADE_SECONDS = 0.010  # long enough that no join clicks, short enough to keep consonants
# Leading/trailing silence inside a clip is trimmed so the pauses above are the pauses heard.
SILENCE_DBFS = -50.0
SILENCE_FRAME_SECONDS = 0.010
SILENCE_KEEP_SECONDS = 0.030  # breathing room left around the speech when trimming
# Audiobook loudness (ACX): whole-file RMS within -23..-18 dBFS, peaks at most -3 dBFS.
TARGET_RMS_DBFS = -20.0
PEAK_CEILING_DBFS = -3.0
BITRATE = "64k"  # mono speech: transparent for AAC, plenty for MP3 at 24 kHz
FORMATS = {"m4b": "m4a", "mp3": "mp3", "wav": "wav"}  # book format -> per-chapter file extension


@dataclass
class Segment:
    samples_path: Path  # a 24 kHz mono wav file: one rendered chunk
    pause_after: str  # "sentence" | "paragraph" | "chapter"
    text: str = ""  # what the chunk says, for subtitles


@dataclass
class ExportResult:
    book_path: Path  # the whole book; the chapters folder when the profile writes no book file (ACX)
    chapter_paths: list[Path]
    durations: list[float]  # seconds per chapter, pauses included
    subtitle_paths: list[Path] = field(default_factory=list)

    def paths(self) -> list[Path]:
        """Everything written, the whole book first."""
        return [self.book_path, *self.chapter_paths, *self.subtitle_paths]

    def __fspath__(self) -> str:
        # Lets callers treat the result as "the book file": Path(result), open(result).
        return os.fspath(self.book_path)


# ---------------------------------------------------------------------------------------------
# Assembly


def read_clip(path: Path, sample_rate: int) -> np.ndarray:
    """A chunk's wav as mono float32 samples; a wrong rate is a bug upstream, not something to hide."""
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    return samples.mean(axis=1)  # (T,)


def trim_silence(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Drop leading/trailing frames quieter than SILENCE_DBFS, keeping a little margin; all-quiet stays."""
    frame = max(1, int(sample_rate * SILENCE_FRAME_SECONDS))
    count = len(samples) // frame
    if count == 0:
        return samples
    frames = samples[: count * frame].reshape(count, frame)  # (frames, frame)
    level = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(level > 10 ** (SILENCE_DBFS / 20))
    if loud.size == 0:
        return samples
    keep = int(sample_rate * SILENCE_KEEP_SECONDS)
    start = max(0, loud[0] * frame - keep)
    end = min(len(samples), (loud[-1] + 1) * frame + keep)
    return samples[start:end]


def apply_fades(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Raised-cosine fade in and out, so every join meets silence at zero: no step, no click."""
    samples = samples.astype(np.float32, copy=True)
    length = min(int(sample_rate * FADE_SECONDS), len(samples) // 2)
    if length == 0:
        return samples
    # Reaches exactly 0 at the outer sample and just under 1 at the inner one.
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)).astype(np.float32)
    samples[:length] *= ramp
    samples[-length:] *= ramp[::-1]
    return samples


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)


def assemble_chapter(segments: list[Segment], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One chapter's clips in order, each trimmed and faded, with the pause its chunk asked for after it."""
    return assemble_timed(segments, sample_rate)[0]


def assemble_timed(segments: list[Segment], sample_rate: int = SAMPLE_RATE, head: float | None = None,
                   tail: float | None = None) -> tuple[np.ndarray, list[Cue]]:
    """assemble_chapter, plus each clip's exact place in the chapter (the subtitles' timing).

    head/tail: silence before the first clip and after the last (default: half a chapter pause each).
    """
    half_chapter = PAUSE_SECONDS["chapter"] / 2
    head = half_chapter if head is None else head
    tail = half_chapter if tail is None else tail
    parts = [silence(head, sample_rate)]
    cues, position_samples = [], len(parts[0])
    for position, segment in enumerate(segments):
        if segment.pause_after not in PAUSE_SECONDS:
            raise ValueError(f"unknown pause {segment.pause_after!r}; expected one of {sorted(PAUSE_SECONDS)}")
        clip = apply_fades(trim_silence(read_clip(Path(segment.samples_path), sample_rate), sample_rate), sample_rate)
        cues.append(Cue(position_samples / sample_rate, (position_samples + len(clip)) / sample_rate, segment.text))
        is_last = position == len(segments) - 1
        pause = silence(tail if is_last else PAUSE_SECONDS[segment.pause_after], sample_rate)
        parts += [clip, pause]
        position_samples += len(clip) + len(pause)
    if not segments:
        parts.append(silence(tail, sample_rate))
    return np.concatenate(parts), cues  # (T,)


# ---------------------------------------------------------------------------------------------
# Loudness


def loudness(chapters: list[np.ndarray]) -> tuple[float, float]:
    """(RMS, peak) in dBFS over the whole book, pauses included as ACX measures it; -inf when silent."""
    total = sum(float(np.sum(np.square(c, dtype=np.float64))) for c in chapters)
    count = sum(len(c) for c in chapters)
    peak = max((float(np.max(np.abs(c))) for c in chapters if len(c)), default=0.0)
    rms = (total / count) ** 0.5 if count else 0.0
    to_db = lambda value: float(20 * np.log10(value)) if value > 0 else float("-inf")  # noqa: E731
    return to_db(rms), to_db(peak)


def normalise_loudness(chapters: list[np.ndarray], target_db: float = TARGET_RMS_DBFS,
                       ceiling_db: float = PEAK_CEILING_DBFS) -> list[np.ndarray]:
    """One gain for the whole book: RMS to -20 dBFS unless that would lift a peak above -3 dBFS.

    One gain keeps the chapters' relative levels; the peak limit lowers the gain rather than
    clipping, so with very peaky audio the RMS may end below the target. A single array
    (one chapter) is accepted too and comes back as a single array.
    """
    if isinstance(chapters, np.ndarray):
        return normalise_loudness([chapters], target_db, ceiling_db)[0]
    rms_db, peak_db = loudness(chapters)
    if not np.isfinite(rms_db):
        return [np.asarray(c, dtype=np.float32).copy() for c in chapters]
    gain_db = min(target_db - rms_db, ceiling_db - peak_db)
    gain = np.float32(10 ** (gain_db / 20))
    return [np.asarray(c, dtype=np.float32) * gain for c in chapters]


# ---------------------------------------------------------------------------------------------
# Export


def safe_filename(name: str) -> str:
    """A title as a file name on every common file system."""
    name = name.replace(":", " -").replace("/", "-").replace("\\", "-")
    name = re.sub(r'[*?"<>|\x00-\x1f]', "", name)
    name = re.sub(r"\s+", " ", name).strip(" .")
    return name[:80].rstrip(" .")


def ffmetadata(tags: dict[str, str], chapters: list[tuple[str, int, int]]) -> str:
    """ffmpeg's metadata file: global tags, then [CHAPTER] blocks with millisecond start/end."""

    def escape(value: str) -> str:
        return re.sub(r"([=;#\\\n])", r"\\\1", value)

    lines = [";FFMETADATA1"]
    lines += [f"{key}={escape(value)}" for key, value in tags.items() if value]
    for title, start_ms, end_ms in chapters:
        lines += ["", "[CHAPTER]", "TIMEBASE=1/1000", f"START={start_ms}", f"END={end_ms}", f"title={escape(title)}"]
    return "\n".join(lines) + "\n"


def partial_path(path: Path) -> Path:
    """Where a file is written before it gets its name, so no half file ever has the final name."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def write_wav(path: Path, pieces: list[np.ndarray], sample_rate: int, tags: dict[str, str]) -> None:
    temporary = partial_path(path)
    with soundfile.SoundFile(str(temporary), "w", samplerate=sample_rate, channels=1, format="WAV", subtype="PCM_16") as out:
        for key in ("title", "artist", "album", "genre"):
            if tags.get(key):
                setattr(out, key, tags[key])
        for piece in pieces:
            out.write(np.clip(piece, -1.0, 1.0))
    os.replace(temporary, path)


def write_encoded(path: Path, pieces, fmt: str, sample_rate: int, tags: dict[str, str],
                  chapters: list[tuple[str, int, int]], bitrate: str = BITRATE, language3: str = "",
                  finish: Callable[[Path], None] | None = None) -> None:
    """Stream float samples into ffmpeg (no whole-book copy in memory); AAC-in-MP4 or MP3, tags and chapters.

    `finish` gets the whole, encoded file under its temporary name (to tag it) before it is renamed.
    """
    ffmpeg = require_ffmpeg()
    temporary = partial_path(path)
    if fmt in ("m4b", "m4a"):
        # AAC in MP4 ("ipod" flavour); the M4B brand tells players it is an audiobook (bookmarks).
        brand = ["-brand", "M4B "] if fmt == "m4b" else []
        codec = ["-c:a", "aac", "-movflags", "+faststart", *brand, "-f", "ipod"]
    else:
        # libmp3lame with a bitrate and no quality setting is constant bitrate, and ffmpeg writes
        # the "Info" header that tells readers so.
        codec = ["-c:a", "libmp3lame", "-id3v2_version", "3", "-f", "mp3"]
    language = ["-metadata:s:a:0", f"language={language3}"] if language3 else []
    with tempfile.TemporaryDirectory() as scratch:
        metadata_path = Path(scratch) / "metadata.txt"
        metadata_path.write_text(ffmetadata(tags, chapters), encoding="utf-8")
        command = [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
            "-f", "ffmetadata", "-i", str(metadata_path),
            "-map", "0:a", "-map_metadata", "1", "-map_chapters", "1" if chapters else "-1", *language,
            "-b:a", bitrate, *codec, str(temporary),
        ]  # fmt: skip
        # stderr to a file: a pipe could fill up and stall ffmpeg while we are still writing.
        with open(Path(scratch) / "stderr.txt", "w+b") as errors:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
            try:
                for piece in pieces:
                    process.stdin.write(np.asarray(piece, dtype="<f4").tobytes())
                process.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped early; its exit code and message say why
            except BaseException:
                process.kill()
                process.wait()
                temporary.unlink(missing_ok=True)
                raise
            code = process.wait()
            errors.seek(0)
            message = errors.read().decode("utf-8", "replace").strip().splitlines()
    if code != 0:
        temporary.unlink(missing_ok=True)
        detail = message[-1] if message else f"exit code {code}"
        raise UserError(f"ffmpeg could not write {path.name}: {detail}")
    if finish is not None:
        try:
            finish(temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, path)


def write_audio(path: Path, pieces, fmt: str, sample_rate: int, tags: dict[str, str],
                chapters: list[tuple[str, int, int]] = (), **encoding) -> None:
    if fmt == "wav":
        write_wav(path, list(pieces), sample_rate, tags)  # plain PCM needs no ffmpeg
    else:
        write_encoded(path, pieces, fmt, sample_rate, tags, list(chapters), **encoding)


# A chapter's samples, or a function that makes them (so a book file can be streamed chapter by
# chapter without holding every mastered chapter in memory).
ChapterAudio = np.ndarray | Callable[[], np.ndarray]


def export_book(chapters: list[tuple[str, ChapterAudio]], out_dir: Path, fmt: str, title: str, author: str | None,
                sample_rate: int = SAMPLE_RATE, *, tags=None, bitrate: str = BITRATE, book_file: bool = True,
                cues: list[list[Cue]] | None = None, subtitles: str | None = None) -> ExportResult:
    """Per-chapter files under out_dir/chapters/ and the whole book (m4b with chapter markers, mp3, or wav).

    tags: a tags.BookTags (cover, narrator, series...) written into every mp3/m4b with mutagen; by
    default one made from title and author. cues and subtitles ("srt" | "vtt"): each chapter's
    chunk timings, written beside each chapter file and the book.
    """
    from tutortoietts.tags import BookTags, write_tags

    if fmt not in FORMATS:
        raise UserError(f"unknown audio format '{fmt}': use one of {', '.join(FORMATS)}")
    if fmt != "wav":
        require_ffmpeg()
    if not chapters:
        raise UserError("nothing to export: the book has no rendered chapters")
    tags = tags or BookTags(title=title, authors=(author,) if author else ())
    out_dir = Path(out_dir)
    chapter_dir = out_dir / "chapters"
    chapter_dir.mkdir(parents=True, exist_ok=True)
    artist = tags.artist
    book_tags = {"title": tags.title, "album": tags.title, "artist": artist, "album_artist": artist, "genre": "Audiobook"}
    encoding = {"bitrate": bitrate, "language3": tags.language3}

    def audio(source: ChapterAudio) -> np.ndarray:
        return source() if callable(source) else source

    chapter_paths, durations, markers, subtitle_paths, start = [], [], [], [], 0
    for number, (chapter_title, source) in enumerate(chapters, start=1):
        samples = audio(source)
        name = safe_filename(chapter_title) or f"Chapter {number}"
        path = chapter_dir / f"{number:02d} - {name}.{FORMATS[fmt]}"
        track = (number, len(chapters))
        chapter_tags = {**book_tags, "title": chapter_title, "track": f"{number}/{len(chapters)}"}
        write_audio(path, [samples], "m4a" if fmt == "m4b" else fmt, sample_rate, chapter_tags, **encoding,
                    **({} if fmt == "wav" else {"finish": lambda p, t=chapter_title, n=track: write_tags(p, tags, t, n)}))
        chapter_paths.append(path)
        durations.append(len(samples) / sample_rate)
        if subtitles and cues is not None:
            subtitle_paths.append(write_subtitles(path.with_suffix(f".{subtitles}"), cues[number - 1], subtitles))
        end = start + len(samples)
        markers.append((chapter_title, round(start * 1000 / sample_rate), round(end * 1000 / sample_rate)))
        start = end

    if not book_file:
        return ExportResult(book_path=chapter_dir, chapter_paths=chapter_paths, durations=durations, subtitle_paths=subtitle_paths)
    book_path = out_dir / f"{safe_filename(tags.title) or 'audiobook'}.{fmt}"
    write_audio(book_path, (audio(source) for _, source in chapters), fmt, sample_rate, book_tags, markers, **encoding,
                **({} if fmt == "wav" else {"finish": lambda p: write_tags(p, tags)}))
    if subtitles and cues is not None:
        offsets = np.concatenate([[0.0], np.cumsum(durations)])
        book_cues = [cue for chapter_cues, offset in zip(cues, offsets) for cue in shifted(chapter_cues, float(offset))]
        subtitle_paths.insert(0, write_subtitles(book_path.with_suffix(f".{subtitles}"), book_cues, subtitles))
    return ExportResult(book_path=book_path, chapter_paths=chapter_paths, durations=durations, subtitle_paths=subtitle_paths)


def finish_book(chapters: list[tuple[str, list[Segment]]], out_dir: Path, fmt: str, tags, profile=None,
                subtitles: str | None = None, sample_rate: int = SAMPLE_RATE) -> ExportResult:
    """Rendered chunks to the finished book: chapters assembled, mastered by the profile, exported.

    profile: a mastering.Profile (default: the "default" one: today's one gain for the whole book).
    """
    from tutortoietts.mastering import load_profile, master_file, resample

    profile = profile or load_profile("default")
    if profile.format and fmt != profile.format:
        raise UserError(f"--master {profile.name} writes {profile.format} files: leave out --format or use --format {profile.format}")
    assembled = [assemble_timed(segments, sample_rate, profile.head_seconds, profile.tail_seconds) for _, segments in chapters]
    if profile.level == "book-rms":
        # One gain for the whole book keeps the chapters' relative levels (and today's output).
        levelled = normalise_loudness([samples for samples, _ in assembled], profile.target, profile.peak_ceiling)
        sources = [lambda x=x: resample(x, sample_rate, profile.sample_rate) for x in levelled]
        if profile.sample_rate == sample_rate:
            sources = levelled
    else:
        # Each file to the target on its own (ACX measures every file; a podcast episode stands alone).
        sources = [lambda x=samples: master_file(x, sample_rate, profile) for samples, _ in assembled]
    named = [(title, source) for (title, _), source in zip(chapters, sources)]
    return export_book(named, out_dir, fmt, tags.title, None, profile.sample_rate, tags=tags, bitrate=profile.bitrate,
                       book_file=profile.book_file, cues=[cues for _, cues in assembled], subtitles=subtitles)
