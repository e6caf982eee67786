"""Sampler fidelity: how far a fast diffusion sampler lands from a many-step deterministic solution."""

from __future__ import annotations

import torch

from tutortoietts.engine.diffusion import DiffusionDecoder, output_frames, sample_mel


def sampler_fidelity(
    net: DiffusionDecoder,
    latents: torch.Tensor,
    cond: torch.Tensor,
    candidates: dict[str, tuple],
    *,
    reference: tuple = ("ddim", 200),
    cond_free: bool = True,
    cond_free_k: float = 2.0,
    seed: int = 0,
) -> dict[str, float]:
    """How far each (sampler, steps) candidate lands from a many-step deterministic mel, same x_T.

    A candidate is (sampler, steps) or (sampler, steps, spacing). Returns the RMS log-mel
    difference per candidate name. The reference run (default 200-step
    DDIM, the probability-flow solution the fast samplers approximate) and every candidate start
    from one seeded draw; DDPM candidates take their per-step noise from the same seed too. Used by
    the tests on a tiny net and by `bench` at full size.
    """
    frames = output_frames(latents.shape[1])
    noise = torch.randn((latents.shape[0], net.in_channels, frames), generator=torch.Generator().manual_seed(seed))

    def run(sampler: str, steps: int, spacing: str | None = None) -> torch.Tensor:
        generator = torch.Generator(device=latents.device).manual_seed(seed + 1)
        return sample_mel(
            net, latents, cond, steps=steps, sampler=sampler, cond_free=cond_free, cond_free_k=cond_free_k,
            temperature=1.0, noise=noise, generator=generator, spacing=spacing,
        )

    target = run(*reference)
    return {name: (run(*candidate) - target).pow(2).mean().sqrt().item() for name, candidate in candidates.items()}
