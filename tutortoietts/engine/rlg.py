"""Random-latent generators: an MLP that maps Gaussian noise to a plausible conditioning latent (the "random" voice)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LR_MUL = 0.1  # the equalised learning-rate multiplier the official weights were trained with
DEPTH = 5  # equalised layers before the final plain Linear
SLOPE = 0.2


class EqualizedLinear(nn.Module):
    """Linear with runtime weight scaling, then a gain-corrected leaky ReLU (StyleGAN2's EqualLinear + fused_lrelu).

    The stored weight is N(0, 1/lr_mul^2) and is scaled by lr_mul / sqrt(in) at every call (Karras et
    al. 2018, section 4.1); the bias is scaled by lr_mul, and sqrt(2) restores the variance the ReLU halves.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / LR_MUL)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = LR_MUL / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        h = F.linear(x, self.weight * self.scale) + self.bias * LR_MUL
        return F.leaky_relu(h, negative_slope=SLOPE) * math.sqrt(2)


class RandomLatentGenerator(nn.Module):
    """Noise -> latent, keys as the reference RandomLatentConverter(channels) (rlg_auto.pth, rlg_diffuser.pth)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.layers = nn.Sequential(*(EqualizedLinear(channels, channels) for _ in range(DEPTH)),
                                    nn.Linear(channels, channels))

    @torch.no_grad()
    def forward(self, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents. -> (n, channels) float32 (the noise is drawn like the reference's torch.randn(n, channels))."""
        weight = self.layers[-1].weight
        device = weight.device if generator is None else generator.device
        noise = torch.randn(n, self.channels, generator=generator, device=device).to(weight.device)
        return self.layers(noise.to(weight.dtype)).float()
