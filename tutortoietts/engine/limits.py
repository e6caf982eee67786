"""What Tortoise's networks and samplers accept, defined once: sample rates, token tables, sampler and
precision names, and the range of every generation setting.

Settings validation checks each value against RULES before anything is planned, and the engine's
own checks (decoding, samplers) call the same rules, so the two cannot disagree. No torch here:
reading a preset or listing voices must not pay for importing it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

from tutortoietts.errors import UserError

# Audio. One autoregressive code stands for 4 frames of the conditioning mel (hop 256) at 22.05 kHz.
CONDITIONING_SAMPLE_RATE = 22050  # voice clips, and the audio the autoregressive codes were learned from
SAMPLE_RATE = 24000  # the diffusion decoder's mel and the vocoder's output: every clip the engine returns
SAMPLES_PER_CODE = 1024  # conditioning-rate samples per autoregressive code (4 mel frames x hop 256)

# The official autoregressive model's position tables (configs.FULL; tts() never asks for more).
MAX_TEXT_TOKENS = 402  # text positions, less the two the model adds around the text
MAX_MEL_TOKENS = 604  # codes one generation may produce

# Diffusion.
TRAINED_STEPS = 4000  # the diffusion decoder was trained on a 4000-step linear schedule
# Every schedule spans pure noise to the clean end, so it needs two timesteps: the reference's
# spacing puts a lone step at timestep 0, which would hand the starting noise back as the mel.
MIN_DIFFUSION_STEPS = 2
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m")  # the reference's sampler, DDIM, DPM-Solver++(2M)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # what each means on a device: pipeline.resolve_precision
# Latents to audio: the diffusion decoder and vocoder (tts()), or Tortoise 3.0's HiFi decoder (api_fast).
DECODERS = ("diffusion", "hifi")


class Rule(NamedTuple):
    """A setting's valid values: a test and the words that say it ("at least 1")."""

    ok: Callable[[object], bool]
    text: str


# Named like the reference's tts() keywords (and Settings' fields).
RULES: dict[str, Rule] = {
    "num_autoregressive_samples": Rule(lambda v: v >= 1, "at least 1"),
    "temperature": Rule(lambda v: 0 < v < math.inf, "a finite number greater than 0"),
    # top_p = 0 would keep only the most likely code (greedy, every candidate the same): refused,
    # as a nucleus of no probability is no sampling setting; temperature near 0 gives that.
    "top_p": Rule(lambda v: 0 < v <= 1, "greater than 0 and at most 1"),
    "repetition_penalty": Rule(lambda v: 0 < v < math.inf, "a finite number greater than 0"),
    "length_penalty": Rule(math.isfinite, "a finite number"),
    "max_mel_tokens": Rule(lambda v: 1 <= v <= MAX_MEL_TOKENS, f"between 1 and {MAX_MEL_TOKENS}"),
    "diffusion_iterations": Rule(
        lambda v: MIN_DIFFUSION_STEPS <= v <= TRAINED_STEPS,
        f"between {MIN_DIFFUSION_STEPS} and {TRAINED_STEPS} (the diffusion model's trained steps)",
    ),
    "cond_free_k": Rule(lambda v: 0 <= v < math.inf, "a finite number, 0 or more"),
    "diffusion_temperature": Rule(lambda v: 0 <= v < math.inf, "a finite number, 0 or more"),
    "sampler": Rule(lambda v: v in SAMPLER_NAMES, "one of " + ", ".join(SAMPLER_NAMES)),
    "precision": Rule(lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "autoregressive_batch_size": Rule(lambda v: v >= 0, "0 (the default, 16) or more"),
    "decoder": Rule(lambda v: v in DECODERS, "one of " + ", ".join(DECODERS)),
    "diffusion_steps": Rule(lambda v: v in ("fixed", "auto"),
                            '"fixed" (diffusion_iterations) or "auto" (per chunk, from its text, within diffusion_steps_range)'),
    "diffusion_steps_range": Rule(
        lambda v: v == () or (len(v) == 2 and MIN_DIFFUSION_STEPS <= v[0] <= v[1] <= TRAINED_STEPS),
        f"[min, max] with {MIN_DIFFUSION_STEPS} <= min <= max <= {TRAINED_STEPS}, or [] for [diffusion_iterations / 2, diffusion_iterations]",
    ),
    # Which blocks exist depends on the checkpoint: the engine checks the upper end when it applies them.
    "ar_layers": Rule(lambda v: all(i >= 0 for i in v) and len(set(v)) == len(v),
                      "distinct autoregressive block indices, 0 or more ([] runs every block)"),
}


def check(name: str, value) -> None:
    """Raise the one-line UserError for a value outside its rule."""
    rule = RULES[name]
    if not rule.ok(value):
        raise UserError(f"setting {name} = {value!r} is out of range: it must be {rule.text}")
