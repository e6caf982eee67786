"""UnivNet vocoder: 24 kHz waveform from a 100-band mel and noise (Jang et al. 2021, arXiv:2106.07889).

Noise is upsampled x256 by three location-variable-convolution (LVC) blocks whose kernels a small
network predicts from the mel, frame by frame. Parameters are stored as the official vocoder.pth
stores them, weight-normalised (weight_g, weight_v); each convolution folds them into one plain
weight the first time it runs for inference, so the norm is not recomputed on every call.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SILENCE_LOG_MEL = -11.5129  # log(1e-5): the log floor of the mel, i.e. digital silence
SILENCE_FRAMES = 10  # appended before vocoding and cut off after, so the clip does not end in a click
KPNET_HIDDEN = 64  # kernel predictor width (the reference's default; UnivNet-c32 uses it)
LVC_KERNEL = 3  # size of the predicted convolution kernels


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """w = g * v / ||v||, norms over every dim but the first (Salimans & Kingma 2016, eq. 2)."""
    v = weight_v.float()
    norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
    return (weight_g.float() * v / norm).to(weight_v.dtype)


class WeightNormConv(nn.Module):
    """Conv1d or ConvTranspose1d kept in the weight-norm layout of the checkpoint (bias, weight_g, weight_v)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, transposed: bool = False,
                 stride: int = 1, padding: int = 0, output_padding: int = 0, dilation: int = 1, reflect: bool = False):
        super().__init__()
        self.transposed, self.stride, self.padding = transposed, stride, padding
        self.output_padding, self.dilation, self.reflect = output_padding, dilation, reflect
        # torch stores a transposed convolution's weight as (in, out, k); weight norm is over dim 0 either way.
        shape = (in_channels, out_channels, kernel_size) if transposed else (out_channels, in_channels, kernel_size)
        weight = torch.empty(shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # torch's own Conv1d initialisation
        fan_in = shape[1] * kernel_size
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-fan_in ** -0.5, fan_in ** -0.5))
        # At initialisation g = ||v||, so the layer starts as the plain convolution it was drawn as.
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(weight)
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_load_state_dict_pre_hook(_forget_folded_weight)

    def fold(self) -> None:
        """Cache the effective weight for inference (follows later .to() calls like any buffer)."""
        with torch.no_grad():
            self.folded_weight = fold_weight_norm(self.weight_g, self.weight_v)

    def train(self, mode: bool = True):
        if mode:
            self.folded_weight = None  # training changes g and v: the cache would go stale
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, L) -> (B, C_out, L')
        weight = self.folded_weight if self.folded_weight is not None else fold_weight_norm(self.weight_g, self.weight_v)
        if self.transposed:
            return F.conv_transpose1d(x, weight, self.bias, stride=self.stride, padding=self.padding,
                                      output_padding=self.output_padding)
        if self.reflect:
            return F.conv1d(F.pad(x, (self.padding, self.padding), mode="reflect"), weight, self.bias,
                            stride=self.stride, dilation=self.dilation)
        return F.conv1d(x, weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation)


def _forget_folded_weight(module, state_dict, prefix, *args) -> None:
    module.folded_weight = None  # new g and v are coming in


class KernelPredictor(nn.Module):
    """Mel (B, mels, F) -> per-frame LVC kernels (B, layers, C_in, C_out, K, F) and biases (B, layers, C_out, F)."""

    def __init__(self, cond_channels: int, conv_in: int, conv_out: int, layers: int, kpnet_conv_size: int, slope: float):
        super().__init__()
        self.conv_in, self.conv_out, self.layers = conv_in, conv_out, layers
        pad = (kpnet_conv_size - 1) // 2

        def conv(channels_out: int) -> WeightNormConv:
            return WeightNormConv(KPNET_HIDDEN, channels_out, kpnet_conv_size, padding=pad)

        # Sequential indices are the checkpoint's: input_conv.0, residual_convs.N.1 / .3.
        self.input_conv = nn.Sequential(WeightNormConv(cond_channels, KPNET_HIDDEN, 5, padding=2), nn.LeakyReLU(slope))
        self.residual_convs = nn.ModuleList(
            nn.Sequential(nn.Dropout(0.0), conv(KPNET_HIDDEN), nn.LeakyReLU(slope), conv(KPNET_HIDDEN), nn.LeakyReLU(slope))
            for _ in range(3)
        )
        self.kernel_conv = conv(conv_in * conv_out * LVC_KERNEL * layers)
        self.bias_conv = conv(conv_out * layers)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, frames = mel.shape
        h = self.input_conv(mel)  # (B, 64, F)
        for block in self.residual_convs:
            h = h + block(h)
        kernels = self.kernel_conv(h).view(batch, self.layers, self.conv_in, self.conv_out, LVC_KERNEL, frames)
        biases = self.bias_conv(h).view(batch, self.layers, self.conv_out, frames)
        return kernels, biases


def location_variable_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, hop: int) -> torch.Tensor:
    """Convolve each run of `hop` samples with its own frame's kernel (UnivNet eq. 1, dilation 1).

    x (B, C_in, F * hop), kernel (B, C_in, C_out, K, F), bias (B, C_out, F) -> (B, C_out, F * hop)
    """
    batch, channels_in, length = x.shape
    channels_out, size, frames = kernel.shape[2], kernel.shape[3], kernel.shape[4]
    pad = (size - 1) // 2
    # Every output sample's input window, then grouped by the frame whose kernel applies.
    windows = F.pad(x, (pad, pad)).unfold(2, size, 1)  # (B, C_in, L, K)
    windows = windows.reshape(batch, channels_in, frames, hop, size)  # (B, C_in, F, hop, K)
    out = torch.einsum("bifsk,biokf->bofs", windows, kernel)  # (B, C_out, F, hop)
    return (out + bias[..., None]).reshape(batch, channels_out, length)


class LVCBlock(nn.Module):
    """Upsample by `stride`, then gated residual LVC layers at growing dilations. (B, C, L) -> (B, C, L * stride)"""

    def __init__(self, channels: int, cond_channels: int, stride: int, dilations, slope: float, cond_hop: int,
                 kpnet_conv_size: int):
        super().__init__()
        self.cond_hop = cond_hop  # output samples per mel frame at this block's rate
        self.kernel_predictor = KernelPredictor(cond_channels, channels, 2 * channels, len(dilations), kpnet_conv_size, slope)
        # A kernel of 2*stride with this padding gives exactly L * stride samples for any stride.
        upsample = WeightNormConv(channels, channels, 2 * stride, transposed=True, stride=stride,
                                  padding=stride // 2 + stride % 2, output_padding=stride % 2)
        self.convt_pre = nn.Sequential(nn.LeakyReLU(slope), upsample)
        self.conv_blocks = nn.ModuleList(
            nn.Sequential(nn.LeakyReLU(slope),
                          WeightNormConv(channels, channels, LVC_KERNEL, padding=d * (LVC_KERNEL - 1) // 2, dilation=d),
                          nn.LeakyReLU(slope))
            for d in dilations
        )

    def forward(self, x: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = self.convt_pre(x)  # (B, C, L * stride)
        kernels, biases = self.kernel_predictor(mel)
        for layer, conv in enumerate(self.conv_blocks):
            h = location_variable_conv(conv(x), kernels[:, layer], biases[:, layer], self.cond_hop)  # (B, 2C, L')
            # Gated activation unit (WaveNet): sigmoid gate on the first half, tanh on the second.
            x = x + torch.sigmoid(h[:, :channels]) * torch.tanh(h[:, channels:])
        return x


class UnivNet(nn.Module):
    """The UnivNet-c32 generator with the reference UnivNetGenerator's keywords and checkpoint layout."""

    def __init__(self, noise_dim: int = 64, channel_size: int = 32, dilations=(1, 3, 9, 27), strides=(8, 8, 4),
                 lReLU_slope: float = 0.2, kpnet_conv_size: int = 3, hop_length: int = 256, n_mel_channels: int = 100):
        super().__init__()
        self.noise_dim = noise_dim
        self.hop_length = hop_length  # samples per mel frame: what vocode() trims per silence frame
        self.n_mel_channels = n_mel_channels
        blocks, upsampled = [], 1
        for stride in strides:
            upsampled *= stride
            blocks.append(LVCBlock(channel_size, n_mel_channels, stride, tuple(dilations), lReLU_slope, upsampled,
                                   kpnet_conv_size))
        self.res_stack = nn.ModuleList(blocks)
        self.conv_pre = WeightNormConv(noise_dim, channel_size, 7, padding=3, reflect=True)
        self.conv_post = nn.Sequential(nn.LeakyReLU(lReLU_slope),
                                       WeightNormConv(channel_size, 1, 7, padding=3, reflect=True), nn.Tanh())

    def fold_weight_norm(self) -> None:
        """Fold every convolution's g and v into one weight (done by vocode() on first use)."""
        for module in self.modules():
            if isinstance(module, WeightNormConv):
                module.fold()

    def forward(self, mel: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """mel (B, mels, F), noise (B, noise_dim, F) -> waveform (B, 1, F * 256) in (-1, 1)"""
        x = self.conv_pre(noise)  # (B, C, F)
        for block in self.res_stack:
            x = block(x, mel)  # (B, C, F * hop so far)
        return self.conv_post(x)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """mel (n, 100, f) -> waveform (n, 1, f * 256) float32; = reference inference(mel, noise).

        `noise`, if given, is (n, noise_dim, f + 10): it covers the silence frames appended here.
        """
        if any(m.folded_weight is None for m in self.modules() if isinstance(m, WeightNormConv)):
            self.fold_weight_norm()
        dtype = self.conv_pre.weight_v.dtype
        batch, _, frames = mel.shape
        silence = torch.full((batch, self.n_mel_channels, SILENCE_FRAMES), SILENCE_LOG_MEL, device=mel.device)
        padded = torch.cat((mel.float(), silence), dim=2)  # (n, mels, f + 10)
        if noise is None:
            noise = torch.randn(batch, self.noise_dim, frames + SILENCE_FRAMES, generator=generator,
                                device=mel.device if generator is None else generator.device).to(mel.device)
        elif tuple(noise.shape) != (batch, self.noise_dim, frames + SILENCE_FRAMES):
            raise ValueError(f"noise must be {(batch, self.noise_dim, frames + SILENCE_FRAMES)}, got {tuple(noise.shape)}")
        wave = self(padded.to(dtype), noise.to(dtype))  # (n, 1, (f + 10) * 256)
        return wave[..., : -self.hop_length * SILENCE_FRAMES].float().clamp(-1.0, 1.0)
