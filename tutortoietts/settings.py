"""Generation settings: named presets from presets.toml (plus the user's) -> a validated, frozen Settings."""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tutortoietts.engine import limits
from tutortoietts.errors import UserError
from tutortoietts.paths import user_presets_path  # $TUTORTOIETTS_PRESETS, else $XDG_CONFIG_HOME/tutortoietts/presets.toml

# Which settings each stage reads, so a cache key holds exactly those: changing a diffusion
# setting must not throw away cached autoregressive codes. Precision changes the numbers of
# both stages. The batch size belongs to the autoregressive stage: batches draw from the seeded
# generator one after another, so a different split samples different codes.
AUTOREGRESSIVE_FIELDS = (
    "num_autoregressive_samples", "temperature", "top_p", "repetition_penalty",
    "length_penalty", "max_mel_tokens", "precision", "autoregressive_batch_size", "ar_layers",
)
# What autoregressive_batch_size = 0 means: the reference's batch on a large GPU. A fixed number,
# not one fitted to free memory, because the batch split changes the sampled codes.
DEFAULT_AUTOREGRESSIVE_BATCH = 16
DIFFUSION_FIELDS = (
    "diffusion_iterations", "cond_free", "cond_free_k", "diffusion_temperature", "sampler", "precision",
    "diffusion_steps", "diffusion_steps_range",
)
# Later settings enter a cache key only when they differ from these values, so keys made before
# they existed (every preset leaves them here) still match.
KEY_NEUTRAL = {"ar_layers": (), "diffusion_steps": "fixed", "diffusion_steps_range": ()}
# With the hifi decoder the audio depends on no diffusion setting; with "diffusion" the audio
# stage's fields stay DIFFUSION_FIELDS alone, so keys made before `decoder` existed still match.
HIFI_FIELDS = ("decoder", "precision")

BUILTIN_PRESETS = Path(__file__).with_name("presets.toml")


@dataclass(frozen=True)
class Settings:
    """One generation's knobs, named like the reference's tts() keywords.

    Defaults are the reference tts()'s own defaults; presets spell every value out anyway.
    """

    # Autoregressive sampling: candidates drawn, then the best one kept by CLVP.
    num_autoregressive_samples: int = 512
    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 2.0
    length_penalty: float = 1.0
    max_mel_tokens: int = 500  # 20 codes per second of speech
    # Diffusion: codes' latents -> mel spectrogram.
    diffusion_iterations: int = 100
    cond_free: bool = True  # classifier-free guidance: two forward passes per step
    cond_free_k: float = 2.0  # out = cond * (k + 1) - uncond * k
    diffusion_temperature: float = 1.0  # scale of the starting noise
    sampler: str = "ddpm"
    # Latents to audio: "diffusion" (the diffusion model, then the vocoder) or "hifi" (Tortoise
    # 3.0's HiFi decoder: no diffusion, much faster, streams; needs hifidecoder.pth).
    decoder: str = "diffusion"
    # Performance.
    precision: str = "fp32"
    autoregressive_batch_size: int = 0  # 0 = DEFAULT_AUTOREGRESSIVE_BATCH (16) samples per batch
    # Adaptive diffusion steps: "fixed" runs diffusion_iterations; "auto" picks each chunk's count
    # from its text's complexity (the chunker's measure) within diffusion_steps_range [min, max]
    # (empty: [diffusion_iterations / 2, diffusion_iterations]). See for_text().
    diffusion_steps: str = "fixed"
    diffusion_steps_range: tuple = ()
    # Experimental (the layer-ablation study): the autoregressive blocks to run, by index; the
    # others are skipped (identity). Empty = every block, as in every built-in preset.
    ar_layers: tuple = ()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _checked_type(field.name, field.type, getattr(self, field.name))
            object.__setattr__(self, field.name, value)  # ints given for floats become floats
        # The engine's own rules (limits.RULES), so a value it would refuse never gets past here.
        for name in limits.RULES:
            limits.check(name, getattr(self, name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Settings":
        """A copy with some values changed (validated like any Settings); None values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        _reject_unknown(changes, "setting")
        return dataclasses.replace(self, **changes)

    def autoregressive_fields(self) -> dict:
        """The values the autoregressive stage (sampling, reranking, latents) depends on."""
        fields = _key_fields(self, AUTOREGRESSIVE_FIELDS)
        fields["autoregressive_batch_size"] = self.batch_size()  # 0 and 16 sample the same codes
        return fields

    def batch_size(self) -> int:
        """Samples per autoregressive batch, the default resolved."""
        return min(self.num_autoregressive_samples, self.autoregressive_batch_size or DEFAULT_AUTOREGRESSIVE_BATCH)

    def diffusion_fields(self) -> dict:
        """The values the diffusion stage depends on (for one chunk: see for_text)."""
        return _key_fields(self, DIFFUSION_FIELDS)

    def for_text(self, text: str) -> "Settings":
        """These settings for one chunk: with diffusion_steps "auto", diffusion_iterations becomes the
        count adaptive_diffusion_steps picks for `text` (and diffusion_steps "fixed"), so the audio
        stage and the audio cache key both see the count that chunk runs. Otherwise unchanged."""
        if self.diffusion_steps != "auto":
            return self
        low, high = self.diffusion_steps_range or (
            max(limits.MIN_DIFFUSION_STEPS, self.diffusion_iterations // 2), self.diffusion_iterations)
        return dataclasses.replace(self, diffusion_iterations=adaptive_diffusion_steps(text, low, high),
                                   diffusion_steps="fixed", diffusion_steps_range=())

    def audio_fields(self) -> dict:
        """The values the audio stage depends on: diffusion's, or the hifi decoder's (HIFI_FIELDS)."""
        if self.decoder == "hifi":
            return {name: getattr(self, name) for name in HIFI_FIELDS}
        return self.diffusion_fields()


FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Settings))


def _key_fields(settings: Settings, names: tuple[str, ...]) -> dict:
    values = {name: getattr(settings, name) for name in names}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()
            if name not in KEY_NEUTRAL or value != KEY_NEUTRAL[name]}


def text_complexity(text: str) -> float:
    """0 (simple), 0.5 or 1 (dense): the chunker's complexity classes (chunking.target_chars), in order."""
    from tutortoietts.chunking import ChunkLimits, target_chars

    limits_ = ChunkLimits()
    levels = {limits_.simple_chars: 0.0, limits_.default_chars: 0.5, limits_.dense_chars: 1.0}
    return levels[target_chars(text, limits_)]


def adaptive_diffusion_steps(text: str, low: int, high: int) -> int:
    """Diffusion steps for one chunk: `low` for simple text, `high` for dense text (numbers, heavy
    punctuation, long words), halfway between otherwise. A function of the text alone, so a chunk
    always gets the same count (and the same audio key)."""
    return low + int(text_complexity(text) * (high - low) + 0.5)


def _checked_type(name: str, kind: str, value):
    # Annotations are strings here (from __future__ import annotations).
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise UserError(f"setting {name} must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"setting {name} must be a whole number, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"setting {name} must be a number, got {value!r}")
    if kind == "tuple":  # a TOML or JSON list of whole numbers
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise UserError(f"setting {name} must be a list of whole numbers, got {value!r}")
    if isinstance(value, str):
        return value
    raise UserError(f"setting {name} must be a string, got {value!r}")


def _reject_unknown(values: dict, where: str) -> None:
    for key in values:
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(FIELD_NAMES)})"
            raise UserError(f"unknown {where} {key!r}{hint}")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None
    except OSError as error:
        raise UserError(f"cannot read presets file {path}: {error.strerror}") from None
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: {name!r} must be a table ([{name}]) of settings, got {table!r}")
    return data


def preset_tables() -> dict[str, dict]:
    """Every preset's raw values: the built-in file, then the user's laid over it."""
    presets = {name: dict(table) for name, table in _read_toml(BUILTIN_PRESETS).items()}
    user_path = user_presets_path()
    explicit = bool(os.environ.get("TUTORTOIETTS_PRESETS"))
    if not user_path.exists():
        if explicit:
            raise UserError(f"TUTORTOIETTS_PRESETS points to {user_path}, which does not exist")
        return presets
    for name, table in _read_toml(user_path).items():
        table = dict(table)
        base = table.pop("base", None)
        if base is not None and base not in presets:
            raise UserError(f"{user_path}: preset {name!r} has base {base!r}, which is not a known preset")
        _reject_unknown(table, f"key in preset {name!r} ({user_path}):")
        start = presets.get(base or name, {})  # a new preset without a base starts from Settings' defaults
        presets[name] = {**start, **table}
    return presets


def preset_names() -> list[str]:
    return list(preset_tables())


def load_preset(name: str, **overrides) -> Settings:
    """The named preset with keyword overrides on top (None means "not given"), validated."""
    presets = preset_tables()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"unknown preset {name!r}: {hint}known presets: {', '.join(presets)}")
    table = presets[name]
    _reject_unknown(table, f"key in preset {name!r}:")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _reject_unknown(overrides, "setting")
    try:
        return Settings(**{**table, **overrides})
    except UserError as error:
        if overrides and _is_valid(table):
            raise  # the override is at fault (`--set top_p=1.5`): naming the preset would mislead
        raise UserError(f"preset {name!r}: {error}") from None


def _is_valid(table: dict) -> bool:
    try:
        Settings(**table)
    except UserError:
        return False
    return True
