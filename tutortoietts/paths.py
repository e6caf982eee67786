"""Where tutortoietts keeps and finds the user's files: the one resolver of user folders.

Each folder is its TUTORTOIETTS_* variable when that is set, else under the XDG base directory
(XDG_CACHE_HOME, XDG_CONFIG_HOME, XDG_DATA_HOME; ~/.cache, ~/.config, ~/.local/share when unset,
empty or relative, as the XDG spec says). Read at every call, so a variable set later counts.
"""

from __future__ import annotations

import os
from pathlib import Path


def _base(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "")
    # The spec: "If an implementation encounters a relative path in any of these variables it
    # should consider the path invalid and ignore it."
    return Path(value) if os.path.isabs(value) else Path.home() / fallback


def cache_home() -> Path:
    return _base("XDG_CACHE_HOME", ".cache")


def config_home() -> Path:
    return _base("XDG_CONFIG_HOME", ".config")


def data_home() -> Path:
    return _base("XDG_DATA_HOME", ".local/share")


def _override(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """$TUTORTOIETTS_CACHE, else $XDG_CACHE_HOME/tutortoietts: the disk cache and converted weight copies."""
    return _override("TUTORTOIETTS_CACHE") or cache_home() / "tutortoietts"


def user_presets_path() -> Path:
    """$TUTORTOIETTS_PRESETS, else $XDG_CONFIG_HOME/tutortoietts/presets.toml."""
    return _override("TUTORTOIETTS_PRESETS") or config_home() / "tutortoietts" / "presets.toml"


def user_masters_path() -> Path:
    """$TUTORTOIETTS_MASTERS, else $XDG_CONFIG_HOME/tutortoietts/masters.toml: the user's mastering profiles."""
    return _override("TUTORTOIETTS_MASTERS") or config_home() / "tutortoietts" / "masters.toml"


def user_lexicon_path() -> Path:
    """$TUTORTOIETTS_LEXICON, else $XDG_CONFIG_HOME/tutortoietts/lexicon.toml: the user's respellings."""
    return _override("TUTORTOIETTS_LEXICON") or config_home() / "tutortoietts" / "lexicon.toml"


def user_voices_dir() -> Path:
    """$TUTORTOIETTS_VOICES, else $XDG_DATA_HOME/tutortoietts/voices: the user's own voice folders."""
    return _override("TUTORTOIETTS_VOICES") or data_home() / "tutortoietts" / "voices"


def bench_models_dir() -> Path:
    """The full-size random checkpoints `bench` writes once: a cache, so inside cache_dir()."""
    return cache_dir() / "bench-models-full"


def tortoise_cache_dirs() -> list[Path]:
    """The tortoise cache's models folder: under $XDG_CACHE_HOME, then the reference's own
    ~/.cache/tortoise/models (tortoise-tts ignores XDG), so weights it downloaded are found too."""
    folders = [cache_home() / "tortoise" / "models"]
    legacy = Path.home() / ".cache" / "tortoise" / "models"
    return folders if legacy in folders else [*folders, legacy]


def tortoise_models_dirs() -> list[Path]:
    """Where the Tortoise checkpoints are looked for when no folder is given, in order:
    $TORTOISE_MODELS_DIR (the reference's variable), then the tortoise cache."""
    configured = _override("TORTOISE_MODELS_DIR")
    return [configured, *tortoise_cache_dirs()] if configured else tortoise_cache_dirs()


def tortoise_models_dir() -> Path:
    """Where `tutortoietts models download` writes when no folder is given: the first place looked in."""
    return tortoise_models_dirs()[0]
