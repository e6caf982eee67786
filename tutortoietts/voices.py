"""Find a voice by name or path (project, user folder, tortoise's bundled voices) and load its clips."""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path

# Clips are loaded at the rate the autoregressive conditioning mel expects.
from tutortoietts.engine.limits import CONDITIONING_SAMPLE_RATE
from tutortoietts.errors import UserError
from tutortoietts.paths import user_voices_dir  # $TUTORTOIETTS_VOICES, else $XDG_DATA_HOME/tutortoietts/voices

# The formats tortoise's own voices come in plus the lossless ones people record in.
CLIP_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg")
# The conditioning encoders hear up to 6 s of each clip (132300 samples at 22.05 kHz, zero-padded
# when shorter), and tortoise advises clips of about 10 s. Under half a second, a word at most,
# they mostly hear padding: such a clip is almost always a cutting or export mistake.
MIN_CLIP_SECONDS = 0.5
# Formats whose header soundfile reads in microseconds, so clips are checked before rendering;
# the others are decoded by ffmpeg and judged when the engine loads them.
HEADER_SUFFIXES = (".wav", ".flac")
SOURCES = ("project", "user", "tortoise", "path", "random")


@dataclass(frozen=True)
class Voice:
    """A named set of reference clips; `random` has no clips and draws its latents from a seed."""

    name: str
    source: str  # one of SOURCES
    clips: list[Path] = field(default_factory=list, hash=False)

    @property
    def is_random(self) -> bool:
        return self.source == "random"


def project_voices_dir() -> Path | None:
    """The repository's voices/ folder; an installed package finds it only through the environment."""
    configured = os.environ.get("TUTORTOIETTS_PROJECT_VOICES")
    if configured:
        return Path(configured).expanduser()
    beside_package = Path(__file__).resolve().parent.parent / "voices"
    # Inside site-packages there is no voices/ next to the package, so this simply finds nothing.
    return beside_package if beside_package.is_dir() else None


def tortoise_voices_dir() -> Path | None:
    """tortoise-tts ships emma, tom, ... as data files; we read them, never its model code."""
    try:
        bundled = importlib.resources.files("tortoise") / "voices"
    except ModuleNotFoundError:
        return None
    path = Path(str(bundled))
    return path if path.is_dir() else None


def _search_dirs() -> list[tuple[str, Path]]:
    """(source, folder) in lookup order: the first folder holding a name wins."""
    found = []
    for source, directory in (("project", project_voices_dir()), ("user", user_voices_dir()), ("tortoise", tortoise_voices_dir())):
        if directory is not None and directory.is_dir():
            found.append((source, directory))
    return found


def clips_in(folder: Path) -> list[Path]:
    """The audio clips in a voice folder, sorted so the voice (and its fingerprint) is stable."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CLIP_SUFFIXES)


def list_voices() -> list[Voice]:
    """Every voice that can be named, one per name (earlier sources shadow later ones), sorted."""
    voices: dict[str, Voice] = {}
    for source, directory in _search_dirs():
        for sub in sorted(directory.iterdir()):
            if sub.name in voices or not sub.is_dir():
                continue
            clips = clips_in(sub)
            # Folders holding only precomputed .pth latents (tortoise's cond_latent_example) have no clips.
            if clips:
                voices[sub.name] = Voice(sub.name, source, clips)
    return [voices[name] for name in sorted(voices)]


def _looks_like_path(text: str) -> bool:
    """The rule for --voice: a path has a separator, starts with '.' or '~', or names a clip file;
    anything else is a name. A name is only ever matched against the folders list_voices found,
    never joined onto a folder, so no name (`..`, `a/../../b`) can reach outside them; a path is
    the user's own choice of files, read as audio only."""
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    return (any(sep in text for sep in separators) or text.startswith((".", "~"))
            or Path(text).suffix.lower() in CLIP_SUFFIXES)


def _voice_from_path(path: Path) -> Voice:
    if not path.exists():
        raise UserError(f"voice path not found: {path} (a --voice with '/' or a leading '.' is a path to clips; "
                        f"voice names are plain folder names, see `tutortoietts voices`)")
    if path.is_file():
        if path.suffix.lower() not in CLIP_SUFFIXES:
            raise UserError(f"voice clip must be one of {', '.join(CLIP_SUFFIXES)}: {path}")
        return Voice(path.stem, "path", [path.resolve()])
    clips = clips_in(path)
    if not clips:
        raise UserError(f"voice folder has no audio clips ({', '.join(CLIP_SUFFIXES)}): {path}")
    return Voice(path.resolve().name, "path", [c.resolve() for c in clips])


def find_voice(name_or_path: str) -> Voice:
    """Resolve --voice: `random`, a named voice from the search folders, or a folder/file of clips."""
    text = name_or_path.strip()
    if not text:
        raise UserError("--voice is empty: give a voice name (see `tutortoietts voices`), a folder of clips, or 'random'")
    if text == "random":
        return Voice("random", "random", [])
    voice = _resolve(text)
    check_clips(voice)  # before rendering starts, so a bad clip stops nothing half-way
    return voice


def _resolve(text: str) -> Voice:
    if _looks_like_path(text):
        return _voice_from_path(Path(text).expanduser())
    known = {voice.name: voice for voice in list_voices()}
    if text in known:
        return known[text]
    # A bare name that happens to be a folder in the working directory still counts.
    if Path(text).is_dir():
        return _voice_from_path(Path(text))
    # list_voices skips folders without clips; say so rather than "unknown". Safe to join:
    # a name has no separator and does not start with '.' (_looks_like_path).
    for _, directory in _search_dirs():
        if (directory / text).is_dir():
            raise UserError(f"voice '{text}' has no audio clips ({', '.join(CLIP_SUFFIXES)}) in {directory / text}")
    close = difflib.get_close_matches(text, list(known), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown voice '{text}'{hint} (`tutortoietts voices` lists them; a folder of clips also works)")


def check_clips(voice: Voice) -> None:
    """Refuse unreadable or too-short clips from their headers alone (wav, flac): milliseconds."""
    import soundfile

    for path in voice.clips:
        if path.suffix.lower() not in HEADER_SUFFIXES:
            continue
        try:
            info = soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError) as error:  # "Format not recognised", a cut header...
            reason = getattr(error, "error_string", None) or str(error)
            raise UserError(f"voice clip {path} cannot be read as audio ({reason}); replace it or remove it from the folder") from None
        _check_length(path, info.frames / info.samplerate if info.samplerate else 0.0)


def _check_length(path: Path, seconds: float) -> None:
    if seconds < MIN_CLIP_SECONDS:
        raise UserError(
            f"voice clip {path} is too short ({seconds:.2f} s): each clip needs at least {MIN_CLIP_SECONDS} s "
            f"of speech (about 10 s is best); replace it or remove it from the folder"
        )


def voice_fingerprint(voice: Voice, seed: int = 0) -> str:
    """sha256 over the clips' bytes (not their names), so renaming a folder keeps its cache."""
    digest = hashlib.sha256()
    if voice.is_random:
        # A random voice is its seed: the same seed draws the same latents.
        digest.update(f"random:{seed}".encode())
        return digest.hexdigest()
    for clip in voice.clips:
        digest.update(hashlib.sha256(clip.read_bytes()).digest())
    return digest.hexdigest()


def load_voice_clips(voice: Voice, sample_rate: int = CONDITIONING_SAMPLE_RATE) -> list:
    """The clips as 1-D float tensors at `sample_rate`; a clip that will not decode is a user error."""
    from tutortoietts.engine.audio import load_clip

    clips = []
    for path in voice.clips:
        try:
            clip = load_clip(path, sample_rate)
        except UserError:
            raise
        except Exception as error:  # a corrupt or unsupported file the user can replace
            raise UserError(f"cannot read voice clip {path}: {error}") from error
        _check_length(path, clip.numel() / sample_rate)  # mp3 and ogg are first measured here
        clips.append(clip)
    return clips
