"""The engine's values: a voice's latents, the autoregressive stages' result, a synthesized clip.

Apart from pipeline.py so that the modules the pipeline drives (streaming, batching) can build
them without importing the pipeline back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tutortoietts.engine.limits import SAMPLE_RATE

STOP_MEL_TOKEN = 8193  # the autoregressive model's stop (and pad) code


@dataclass
class VoiceLatents:
    """A voice: the autoregressive model's conditioning (1, d_ar) and the diffusion model's (1, 2 * d_diff)."""

    autoregressive: torch.Tensor
    diffusion: torch.Tensor


@dataclass
class ARResult:
    """What the autoregressive stages leave for the audio stages: every candidate's codes and CLVP
    score, the chosen candidate and its latents. Device-neutral (CPU, float32/int64), so a cache
    can store it as is."""

    codes: torch.Tensor  # (n, T) int64: every sampled candidate, fixed up (fix_codes)
    scores: torch.Tensor  # (n,) CLVP scores, higher is better
    chosen: int  # row of `codes` the audio stages speak
    # The latents of the chosen candidate its run's decoder takes: the diffusion decoder's (cut where the
    # speech ends) or the hifi decoder's (one per code sampled); the other is None, and an audio stage
    # that needs it computes it from the codes (a result cached by a run with the other decoder).
    latents: torch.Tensor | None  # (1, T', d_ar) for the diffusion decoder
    stopped: torch.Tensor | None = None  # (n,) bool: the candidate emitted the stop token (None: not recorded)
    # What lets a later stage compute other latents from the codes (the hifi decoder's); None in
    # results cached before they were recorded (cache.get_ar takes those as misses).
    lengths: torch.Tensor | None = None  # (n,) int64: codes each candidate sampled, its stop code included
    text_ids: torch.Tensor | None = None  # (1, m) int64: the tokenized text the candidates speak
    hifi_latents: torch.Tensor | None = None  # (1, lengths[chosen], d_ar) for the hifi decoder
    timings: dict[str, float] = field(default_factory=dict, compare=False)  # seconds per stage; never cached


@dataclass
class Clip:
    """One synthesized utterance: mono float32 samples at 24 kHz, the codes spoken, seconds per stage."""

    samples: torch.Tensor  # (samples,)
    sample_rate: int = SAMPLE_RATE
    codes: torch.Tensor | None = None  # (T',) the chosen candidate's codes, cut where the audio was cut
    timings: dict[str, float] = field(default_factory=dict)
    mel: torch.Tensor | None = None  # (1, 100, frames) the denormalised mel the vocoder spoke, when diffused here

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def sampled_lengths(sampled: torch.Tensor) -> torch.Tensor:
    """Codes each raw candidate (k, T) holds up to and with its first stop code (T if it never
    stopped): what api_fast streams to its HiFi decoder. -> (k,) int64"""
    is_stop = sampled == STOP_MEL_TOKEN
    first = is_stop.int().argmax(dim=1)
    return torch.where(is_stop.any(dim=1), first + 1, sampled.shape[1]).long()
