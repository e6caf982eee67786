"""Tortoise 3.0's HiFi decoder: autoregressive latents straight to 24 kHz audio (HiFi-GAN, Kong et al. 2020, arXiv:2010.05646).

The generator is HiFi-GAN V1's (transposed-convolution upsampling, each stage followed by a
multi-receptive-field fusion of residual blocks), with the voice's autoregressive conditioning
latent added after the first convolution. api_fast.py feeds it the autoregressive model's latents,
one per code (22.05 kHz / 1024 samples), first stretched by linear interpolation to the output's
frame rate (24 kHz / 256 samples): x4, then x 24000/22050.

Parameters are stored as the official hifidecoder.pth stores them (weight norm: weight_g,
weight_v), so it loads strictly; the convolutions fold them into plain weights on first use.

The interpolation is written out per output frame, in global frame numbers, rather than called
through F.interpolate: a window of latents in the middle of an utterance then gets exactly the
frames a whole-utterance decode computes, which is what lets streaming decode windows and join
them without seams (see `decode_frames`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tutortoietts.engine.limits import CONDITIONING_SAMPLE_RATE, SAMPLE_RATE, SAMPLES_PER_CODE
from tutortoietts.engine.vocoder import WeightNormConv

LRELU_SLOPE = 0.1  # inside the generator; the one before conv_post uses F.leaky_relu's default 0.01
CODE_HOP = SAMPLES_PER_CODE  # input samples (22.05 kHz) per autoregressive code
FRAME_HOP = 256  # output samples (24 kHz) per upsampled frame: the generator's total upsampling
FIRST_STRETCH = CODE_HOP / FRAME_HOP  # 4: codes -> frames at 22.05 kHz / 256
SECOND_STRETCH = SAMPLE_RATE / CONDITIONING_SAMPLE_RATE  # then to frames at 24 kHz / 256


# ---------------------------------------------------------------------------------------------
# Latents -> generator input frames (api_fast's two F.interpolate calls, indexable).
# ---------------------------------------------------------------------------------------------


def interpolated_length(length: int, scale: float) -> int:
    """F.interpolate's output length for a scale_factor: floor(length * scale), in double precision."""
    return int(math.floor(length * scale))


def frame_count(latents: int) -> int:
    """Upsampled frames (each FRAME_HOP output samples) that `latents` codes' latents give."""
    return interpolated_length(interpolated_length(latents, FIRST_STRETCH), SECOND_STRETCH)


def _source_positions(first: int, count: int, input_length: int, scale: float):
    """For output positions first..first+count-1 of a linear stretch by `scale` (align_corners=False):
    the two input positions each one mixes and the weight of the second, as torch computes them.

    torch maps output j to x = (j + 0.5) / scale - 0.5 (clamped at 0), evaluated in double and
    rounded to fp32 (upsample_linear1d with scale_factor given: 1 / scale is the step); x's integer
    part and fraction give the pair and the weight. The last input position pairs with itself.
    """
    step = torch.tensor(1.0 / scale, dtype=torch.float64)  # the step torch derives from scale_factor
    j = torch.arange(first, first + count, dtype=torch.float64)
    x = ((j + 0.5) * step.float().double() - 0.5).clamp(min=0).float()  # (count,)
    left = x.floor().long().clamp(max=input_length - 1)
    weight = (x - left).clamp(0, 1)
    right = torch.where(left < input_length - 1, left + 1, left)
    return left, right, weight


def upsample_latents(latents: torch.Tensor, first: int, count: int, offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Generator input frames first..first+count-1 of an utterance of `total` latents.

    latents (B, T, C) holds the utterance's latents offset..offset+T-1 (all of them by default);
    it must cover every latent those frames read. -> (B, C, count) in the latents' dtype.
    Equal to api_fast's interpolate(interpolate(latents.transpose(1, 2), x4), x 24000/22050) sliced.
    """
    total = offset + latents.shape[1] if total is None else total
    if count < 1:
        return latents.new_zeros(latents.shape[0], latents.shape[2], 0)
    coarse = interpolated_length(total, FIRST_STRETCH)  # frames after the first stretch
    fine = interpolated_length(coarse, SECOND_STRETCH)
    if fine == coarse:  # torch copies when a stretch keeps the length (utterances of 1-2 codes)
        second_left = torch.arange(first, first + count)
        second_right, second_weight = second_left, torch.zeros(count)
    else:
        second_left, second_right, second_weight = _source_positions(first, count, coarse, SECOND_STRETCH)
    # The first stretch, only at the coarse frames the second one reads.
    needed = torch.unique(torch.cat([second_left, second_right]))  # sorted
    first_left, first_right, first_weight = _first_stretch(needed, total)
    if int(first_left.min()) < offset or int(first_right.max()) >= offset + latents.shape[1]:
        raise ValueError(f"frames {first}..{first + count - 1} need latents {int(first_left.min())}.."
                         f"{int(first_right.max())}, the window holds {offset}..{offset + latents.shape[1] - 1}")
    x = latents.transpose(1, 2)  # (B, C, T)
    w = first_weight.to(x.dtype)
    coarse_frames = x[..., first_left - offset] * (1 - w) + x[..., first_right - offset] * w  # (B, C, len(needed))
    # Positions of the second stretch's inputs within `needed`.
    at_left = torch.searchsorted(needed, second_left)
    at_right = torch.searchsorted(needed, second_right)
    v = second_weight.to(x.dtype)
    return coarse_frames[..., at_left] * (1 - v) + coarse_frames[..., at_right] * v


def _first_stretch(positions: torch.Tensor, total: int):
    """The first stretch (x4) evaluated at the given output positions."""
    step = 1.0 / FIRST_STRETCH  # 0.25: exact in binary, so no rounding question
    x = ((positions.double() + 0.5) * step - 0.5).clamp(min=0).float()
    left = x.floor().long().clamp(max=total - 1)
    weight = (x - left).clamp(0, 1)
    right = torch.where(left < total - 1, left + 1, left)
    return left, right, weight


def latent_span(first: int, count: int, total: int) -> tuple[int, int]:
    """(first latent, one past the last) that frames first..first+count-1 of `total` latents read."""
    coarse = interpolated_length(total, FIRST_STRETCH)
    fine = interpolated_length(coarse, SECOND_STRETCH)
    if fine == coarse:
        needed = torch.arange(first, first + count)
    else:
        left, right, _ = _source_positions(first, count, coarse, SECOND_STRETCH)
        needed = torch.cat([left, right])
    left, right, _ = _first_stretch(needed, total)
    return int(left.min()), int(right.max()) + 1


def settled_frames(available: int) -> int:
    """How many leading frames `available` latents fix for good: frames that never read the last
    latent's right neighbour (not there yet, so torch would pair the last latent with itself).
    More latents cannot change them. 0 below 3 latents, where torch copies instead of stretching."""
    if available < 3:
        return 0
    frames = frame_count(available)
    longer = available + 8  # any longer utterance: no end clamp touches these frames
    _, right, _ = _source_positions(0, frames, interpolated_length(longer, FIRST_STRETCH), SECOND_STRETCH)
    _, last_read, _ = _first_stretch(right, longer)  # (frames,) the latest latent each frame reads
    fixed = last_read <= available - 1
    return frames if bool(fixed.all()) else int(fixed.int().argmin())


# ---------------------------------------------------------------------------------------------
# The generator.
# ---------------------------------------------------------------------------------------------


def same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) pairs, each with leaky ReLUs before and a residual around it."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation=(1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d))
            for d in dilation
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv(channels, channels, kernel_size, padding=same_padding(kernel_size, 1)) for _ in dilation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, C, L)
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x

    def reach(self) -> int:
        """Samples each side an output depends on."""
        return sum(c.dilation * (c.weight_v.shape[-1] - 1) // 2 for c in [*self.convs1, *self.convs2])


class ResBlock2(nn.Module):
    """Dilated convolutions, each with a leaky ReLU before and a residual around it."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation=(1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            WeightNormConv(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d))
            for d in dilation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x

    def reach(self) -> int:
        return sum(c.dilation * (c.weight_v.shape[-1] - 1) // 2 for c in self.convs)


def _plain_conv(conv: WeightNormConv) -> nn.Conv1d:
    """The reference's remove_weight_norm: a plain Conv1d (keys weight, bias) of the same shape."""
    out_channels, in_channels, kernel = conv.weight_v.shape
    plain = nn.Conv1d(in_channels, out_channels, kernel, padding=conv.padding, bias=conv.bias is not None)
    weight = plain.weight
    del plain.weight
    plain.weight = weight  # registered after the bias, as remove_weight_norm leaves it: same key order
    return plain


class HifiganGenerator(nn.Module):
    """The reference HifiganGenerator: same constructor keywords, same state dict, same output."""

    def __init__(
        self,
        in_channels: int,  # latent width (official: 1024, the autoregressive model's)
        out_channels: int,  # 1: mono audio
        resblock_type: str,  # "1" (official) or "2"
        resblock_dilation_sizes,  # per residual block kind (official: [[1, 3, 5]] * 3)
        resblock_kernel_sizes,  # one block of each size after every upsampling (official: [3, 7, 11])
        upsample_kernel_sizes,  # transposed-convolution kernels (official: [16, 16, 4, 4])
        upsample_initial_channel: int,  # width after conv_pre, halved by each upsampling (official: 512)
        upsample_factors,  # strides; their product is FRAME_HOP (official: [8, 8, 2, 2])
        inference_padding: int = 5,  # kept for the signature: the reference's inference() never pads
        cond_channels: int = 0,  # conditioning latent width (official: 1024); 0: unconditioned
        conv_pre_weight_norm: bool = True,
        conv_post_weight_norm: bool = True,
        conv_post_bias: bool = True,
    ):
        super().__init__()
        if math.prod(upsample_factors) != FRAME_HOP:
            raise ValueError(f"upsample_factors must multiply to {FRAME_HOP} (24 kHz from frames of {FRAME_HOP} samples), got {upsample_factors}")
        self.inference_padding = inference_padding
        self.num_kernels = len(resblock_kernel_sizes)
        self.upsample_factors = tuple(upsample_factors)
        self.conv_pre = WeightNormConv(in_channels, upsample_initial_channel, 7, padding=3)
        block = ResBlock1 if str(resblock_type) == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for factor, kernel in zip(upsample_factors, upsample_kernel_sizes):
            self.ups.append(WeightNormConv(channels, channels // 2, kernel, transposed=True, stride=factor,
                                           padding=(kernel - factor) // 2))
            channels //= 2
            for size, dilation in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block(channels, size, tuple(dilation)))
        self.conv_post = WeightNormConv(channels, out_channels, 7, padding=3)
        if not conv_post_bias:
            self.conv_post.register_parameter("bias", None)
        if cond_channels > 0:
            self.cond_layer = nn.Conv1d(cond_channels, upsample_initial_channel, 1)
        if not conv_pre_weight_norm:
            self.conv_pre = _plain_conv(self.conv_pre)
        if not conv_post_weight_norm:
            self.conv_post = _plain_conv(self.conv_post)

    # -- the network ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in_channels, F), g (B, cond_channels, 1) -> waveform (B, out_channels, F * 256) in (-1, 1)."""
        o = self.conv_pre(x)  # (B, C0, F)
        if hasattr(self, "cond_layer"):
            o = o + self.cond_layer(g)  # one vector per utterance, broadcast over time
        for index, upsample in enumerate(self.ups):
            o = upsample(F.leaky_relu(o, LRELU_SLOPE))  # (B, C0 / 2^(i+1), F * prod(factors[:i+1]))
            blocks = self.resblocks[index * self.num_kernels : (index + 1) * self.num_kernels]
            # Multi-receptive-field fusion: the mean of the parallel residual blocks.
            total = blocks[0](o)
            for block in blocks[1:]:
                total = total + block(o)
            o = total / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(o)))  # F.leaky_relu's default slope, as the reference

    def fold_weight_norm(self) -> None:
        for module in self.modules():
            if isinstance(module, WeightNormConv):
                module.fold()

    def _ready(self) -> None:
        if any(m.folded_weight is None for m in self.modules() if isinstance(m, WeightNormConv)):
            self.fold_weight_norm()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def receptive_field(self) -> int:
        """Input frames on each side that one output sample can depend on (rounded up, plus one).

        Each layer's reach in its own input samples, divided by the upsampling done before it;
        a transposed convolution of kernel k and stride s reads ceil(k / s) input samples.
        """
        reach = 3.0  # conv_pre: kernel 7
        rate = 1
        for index, upsample in enumerate(self.ups):
            factor = self.upsample_factors[index]
            reach += math.ceil(upsample.weight_v.shape[-1] / factor) / rate
            rate *= factor
            blocks = self.resblocks[index * self.num_kernels : (index + 1) * self.num_kernels]
            reach += max(block.reach() for block in blocks) / rate
        reach += 3 / rate  # conv_post: kernel 7
        return math.ceil(reach) + 1

    # -- inference --------------------------------------------------------------------------------

    def _conditioning(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if cond is None:
            return None
        return cond.reshape(cond.shape[0], -1, 1).to(self.dtype).expand(batch, -1, -1)  # (B, cond_channels, 1)

    @torch.no_grad()
    def inference(self, latents: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """latents (B, T, in_channels), cond (1 or B, cond_channels) -> waveform (B, 1, frame_count(T) * 256), float32.

        = the reference's inference(latents, cond): stretch to the output frame rate, then the generator.
        """
        self._ready()
        x = upsample_latents(latents.to(self.dtype), 0, frame_count(latents.shape[1]))
        return self(x, self._conditioning(cond, latents.shape[0])).float()

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor, cond: torch.Tensor | None, first: int, count: int,
                      offset: int, total: int, context: int | None = None) -> torch.Tensor:
        """The samples of frames first..first+count-1 of an utterance of `total` latents, from a window.

        latents (B, T, C) are the utterance's latents offset..offset+T-1. The generator runs on the
        frames plus `context` frames each side (default: the receptive field), clipped to the
        utterance, so the samples equal those of a whole-utterance decode up to float rounding.
        -> (B, 1, count * 256) float32
        """
        self._ready()
        context = self.receptive_field() if context is None else context
        frames = frame_count(total)
        start, stop = max(0, first - context), min(frames, first + count + context)
        x = upsample_latents(latents.to(self.dtype), start, stop - start, offset, total)
        wave = self(x, self._conditioning(cond, latents.shape[0])).float()  # (B, 1, (stop - start) * 256)
        skip = (first - start) * FRAME_HOP
        return wave[..., skip : skip + count * FRAME_HOP]
