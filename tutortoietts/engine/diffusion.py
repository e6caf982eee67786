"""Tortoise's diffusion decoder (AR latents -> normalised mel), checkpoint-compatible, plus `sample_mel`.

The network predicts epsilon and learned-range variance channels for a 100-band 24 kHz mel,
conditioned on the autoregressive model's latents (stretched to the mel frame rate) and on a
voice latent from reference clips. Everything that does not depend on the timestep lives in
`timestep_independent` and runs once per clip; `forward` is the per-step network. Attribute
names follow the reference's DiffusionTts so official checkpoints load with strict=True.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tutortoietts.engine import samplers
from tutortoietts.engine.limits import CONDITIONING_SAMPLE_RATE, SAMPLE_RATE

# The normalised mel the decoder works in maps [-1, 1] onto this log-mel range (the reference's
# TACOTRON_MEL_MIN / TACOTRON_MEL_MAX).
MEL_LOG_MIN = -11.512925148010254
MEL_LOG_MAX = 2.3143386840820312


def group_count(channels: int) -> int:
    """The reference's GroupNorm group count: 32, or 8/16 for narrow layers, halved until it divides."""
    groups = 8 if channels <= 16 else 16 if channels <= 64 else 32
    while channels % groups:
        groups //= 2
    return groups


class GroupNormFP32(nn.GroupNorm):
    """GroupNorm with fp32 statistics and affine whatever the activations' dtype: bf16 sums over long mels drift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.modulated(x)

    def modulated(self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x) * (1 + scale) + shift, with scale and shift (1, C) folded into the affine, in x's dtype.

        The kernel takes bf16 input with fp32 weights and accumulates in fp32 itself, so no fp32
        copy of the activations is made; folding the modulation saves two more passes over them.
        """
        weight, bias = self.weight.float(), self.bias.float()
        if scale is not None:
            factor = 1 + scale.float().reshape(-1)
            weight, bias = weight * factor, bias * factor + shift.float().reshape(-1)
        if x.dtype == torch.float64:
            weight, bias = weight.double(), bias.double()
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


def group_norm(channels: int) -> GroupNormFP32:
    return GroupNormFP32(group_count(channels), channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos | sin] halves, fp32. (B,) -> (B, dim)"""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)  # (half,)
    angles = timesteps.float()[:, None] * freqs[None, :]  # (B, half)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def relative_position_buckets(length: int, device, num_buckets: int = 32, max_distance: int = 64) -> torch.Tensor:
    """T5-style bidirectional buckets of (query - key) offsets. -> (length, length) long

    Half the buckets per direction: offsets below 8 get their own bucket, larger ones share
    log-spaced buckets up to `max_distance`. The float expression mirrors the reference's so the
    bucket edges (where truncation decides) fall in the same place.
    """
    positions = torch.arange(length, device=device)
    offset = positions[:, None] - positions[None, :]  # (Tq, Tk): query minus key
    per_direction = num_buckets // 2
    exact = per_direction // 2
    bucket = (offset < 0).long() * per_direction
    distance = offset.abs()
    log_part = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_part * (per_direction - exact)).long()).clamp(max=per_direction - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned per-head bias for each relative-position bucket, added to the attention logits."""

    def __init__(self, heads: int, scale: float):
        super().__init__()
        self.scale = scale  # the reference multiplies the learned table by sqrt(head_dim)
        self.relative_attention_bias = nn.Embedding(32, heads)
        self._cache: tuple | None = None  # (key, bias): every step of a sampling run asks for the same length

    def forward(self, length: int, device, dtype: torch.dtype) -> torch.Tensor:
        weight = self.relative_attention_bias.weight
        # The bias depends only on the length and the weights, yet building it (buckets, log, gather
        # over T x T) cost a third of a tiny decoder's step; reuse it across steps at inference.
        key = (length, device, dtype, id(weight), weight._version)
        if self._cache is not None and self._cache[0] == key and not torch.is_grad_enabled():
            return self._cache[1]
        table = self.relative_attention_bias(relative_position_buckets(length, device))  # (T, T, H)
        bias = (table.permute(2, 0, 1).unsqueeze(0) * self.scale).to(dtype)  # (1, H, T, T)
        if not torch.is_grad_enabled():
            self._cache = (key, bias)
        return bias


class AttentionBlock(nn.Module):
    """Pre-norm self-attention over time with relative-position bias and a residual connection."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.relative_pos_embeddings = RelativePositionBias(num_heads, scale=(channels // num_heads) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm(x))  # (B, 3C, T); channels grouped per head as [q | k | v], each head_dim wide
        bias = self.relative_pos_embeddings(x.shape[-1], x.device, qkv.dtype)  # (1, H, T, T)
        if qkv.dtype == torch.float32 or qkv.is_cuda:  # GPUs run SDPA's fused kernels fast in any dtype
            attended = flash_attention(qkv, bias, self.num_heads)
        else:
            attended = bmm_attention(qkv, bias, self.num_heads)
        return self.proj_out(attended).add_(x)  # the projection's output is fresh: add in place


def flash_attention(qkv: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention through SDPA's fused kernel (fp32 throughout). qkv (B, 3C, T) -> (B, C, T)"""
    batch, channels, length = qkv.shape[0], qkv.shape[1] // 3, qkv.shape[2]
    head_dim = channels // heads
    # Contiguous head_dim matters: with a strided last dim SDPA falls back to its slow math path.
    qkv = qkv.reshape(batch, heads, 3, head_dim, length).permute(2, 0, 1, 4, 3).contiguous()  # (3, B, H, T, hd)
    q, k, v = qkv.unbind(dim=0)  # (B, H, T, hd) each
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, hd)
    return attended.transpose(-1, -2).reshape(batch, channels, length)


def bmm_attention(qkv: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """The same attention as two batched matmuls, for bf16. qkv (B, 3C, T) -> (B, C, T)

    On CPUs without AMX, SDPA's fused kernel runs bf16 no faster than fp32 (14 ms for a 435-frame
    guidance batch, a fifth of the step), while bf16 matmuls run twice as fast. Working on the
    channels-first conv output directly also skips the two layout copies: q, k, v are strided
    views and the result comes out as (B, C, T). The bf16 scores and probabilities add about 1%
    to the step's rms difference from fp32 at full size.
    """
    batch, channels, length = qkv.shape[0], qkv.shape[1] // 3, qkv.shape[2]
    head_dim = channels // heads
    grouped = qkv.view(batch, heads, 3, head_dim, length)
    q, k, v = (grouped[:, :, i].reshape(batch * heads, head_dim, length) for i in range(3))  # (BH, hd, T) views
    bias = bias.expand(batch, heads, length, length).reshape(batch * heads, length, length)
    scores = torch.baddbmm(bias, q.transpose(1, 2), k, alpha=head_dim**-0.5)  # (BH, Tq, Tk)
    probs = scores.softmax(dim=-1)
    return torch.bmm(v, probs.transpose(1, 2)).view(batch, channels, length)  # (BH, hd, Tq) -> (B, C, T)


class ResBlock(nn.Module):
    """Norm-SiLU-conv(1) then a timestep-modulated norm (scale and shift) -SiLU-conv(3), residual."""

    def __init__(self, channels: int, emb_channels: int):
        super().__init__()
        # In-place SiLUs only where their input is a fresh norm output (not the emb SiLU: time_emb is shared).
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(inplace=True), nn.Conv1d(channels, channels, 1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * channels))
        # Index 2 held dropout during training; an Identity keeps the checkpoint's index 3 for the conv.
        self.out_layers = nn.Sequential(group_norm(channels), nn.SiLU(inplace=True), nn.Identity(), nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, C, T)
        scale, shift = self.emb_layers(time_emb).chunk(2, dim=1)  # (B, C) each
        norm, silu, _, conv = self.out_layers
        h = conv(silu(modulated_norm(norm, h, scale, shift)))
        return h.add_(x)  # h is this block's own fresh tensor


def modulated_norm(norm: GroupNormFP32, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """norm(h) * (1 + scale) + shift for h (B, C, T) and per-sample scale, shift (B, C)."""
    # The affine is per channel, so the fold needs one modulation for the whole batch: true for a
    # single sample and for guidance, where both halves share the timestep. Otherwise go per sample.
    if scale.shape[0] == 1 or (torch.equal(scale, scale[:1].expand_as(scale)) and torch.equal(shift, shift[:1].expand_as(shift))):
        return norm.modulated(h, scale[:1], shift[:1])
    return torch.cat([norm.modulated(h[i : i + 1], scale[i : i + 1], shift[i : i + 1]) for i in range(h.shape[0])])


class DiffusionLayer(nn.Module):
    """A timestep-conditioned ResBlock followed by self-attention."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.resblk = ResBlock(channels, channels)
        self.attn = AttentionBlock(channels, num_heads)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.resblk(x, time_emb))


class DiffusionDecoder(nn.Module):
    """The reference's DiffusionTts at inference: same keywords, same state-dict keys and shapes."""

    def __init__(
        self,
        model_channels: int = 512,
        num_layers: int = 8,
        in_channels: int = 100,  # mel bands
        in_latent_channels: int = 512,  # width of the autoregressive latents
        in_tokens: int = 8193,  # mel-code vocabulary, for conditioning on codes instead of latents
        out_channels: int = 200,  # epsilon + learned-range variance, per band
        num_heads: int = 16,
        # Training-only keywords, accepted so reference configs construct us unchanged.
        dropout: float = 0,
        use_fp16: bool = False,
        layer_drop: float = 0,
        unconditioned_percentage: float = 0,
    ):
        super().__init__()
        c = model_channels
        self.model_channels = c
        self.in_channels = in_channels

        def attention_stack(count: int, channels: int) -> list[nn.Module]:
            return [AttentionBlock(channels, num_heads) for _ in range(count)]

        self.inp_block = nn.Conv1d(in_channels, c, 3, padding=1)
        self.time_embed = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        # Two ways in for the aligned conditioning: mel codes (embedding) or AR latents (conv).
        self.code_embedding = nn.Embedding(in_tokens, c)
        self.code_converter = nn.Sequential(*attention_stack(3, c))
        self.code_norm = group_norm(c)
        self.latent_conditioner = nn.Sequential(nn.Conv1d(in_latent_channels, c, 3, padding=1), *attention_stack(4, c))
        # The voice encoder: two stride-2 convs down to 2C channels, then attention; its time-mean
        # is the voice latent, split later into a scale and a shift for the aligned embedding.
        self.contextual_embedder = nn.Sequential(
            nn.Conv1d(in_channels, c, 3, padding=1, stride=2),
            nn.Conv1d(c, 2 * c, 3, padding=1, stride=2),
            *attention_stack(5, 2 * c),
        )
        self.unconditioned_embedding = nn.Parameter(torch.randn(1, c, 1))  # stands in for everything when guidance drops conditioning
        self.conditioning_timestep_integrator = nn.ModuleList([DiffusionLayer(c, num_heads) for _ in range(3)])
        self.integrating_conv = nn.Conv1d(2 * c, c, 1)
        self.mel_head = nn.Conv1d(c, in_channels, 3, padding=1)  # training-time auxiliary head; unused here
        self.layers = nn.ModuleList([DiffusionLayer(c, num_heads) for _ in range(num_layers)] + [ResBlock(c, c) for _ in range(3)])
        self.out = nn.Sequential(group_norm(c), nn.SiLU(inplace=True), nn.Conv1d(c, out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.inp_block.weight.dtype

    def conditioning_latent(self, mels: torch.Tensor) -> torch.Tensor:
        """Voice latent from reference mels. (B, clips, 100, S) or (B, 100, S) -> (B, 2C)"""
        if mels.dim() == 3:
            mels = mels.unsqueeze(1)
        batch, clips, bands, frames = mels.shape
        # All clips share one length, so encode them as one batch; the mean over (clips, time) equals
        # the reference's mean over the clips' encodings concatenated in time.
        encoded = self.contextual_embedder(mels.reshape(batch * clips, bands, frames).to(self.dtype))  # (B*clips, 2C, S/4)
        return encoded.float().reshape(batch, clips, encoded.shape[1], -1).mean(dim=(1, 3))

    def unconditioned(self, batch: int, length: int) -> torch.Tensor:
        """The guidance branch's stand-in for the aligned embedding. -> (batch, C, length)"""
        return self.unconditioned_embedding.expand(batch, -1, length)

    def timestep_independent(
        self, aligned: torch.Tensor, conditioning: torch.Tensor, out_len: int, conditioning_free: bool = False
    ) -> torch.Tensor:
        """The aligned embedding every step reuses. -> (B, C, out_len), or (2B, C, out_len) for guidance

        `aligned` is AR latents (B, T, d_ar), float, or mel codes (B, T), long; `conditioning` is
        the voice latent (1 or B, 2C). With `conditioning_free` the unconditioned embedding is
        stacked after the conditioned one, so one `forward` on [x; x] runs both guidance branches.
        """
        conditioning = conditioning.to(self.dtype)
        if aligned.is_floating_point():
            code_emb = self.latent_conditioner(aligned.to(self.dtype).transpose(1, 2))  # (B, C, T)
        else:
            code_emb = self.code_converter(self.code_embedding(aligned).transpose(1, 2))  # (B, C, T)
        scale, shift = conditioning.unsqueeze(-1).chunk(2, dim=1)  # (1|B, C, 1) each
        code_emb = self.code_norm(code_emb) * (1 + scale) + shift
        # Latents come at the AR code rate; nearest-neighbour stretch to the mel frame count.
        code_emb = F.interpolate(code_emb, size=out_len, mode="nearest")  # (B, C, out_len)
        if conditioning_free:
            code_emb = torch.cat([code_emb, self.unconditioned(code_emb.shape[0], out_len).to(code_emb.dtype)])
        return code_emb

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, precomputed: torch.Tensor) -> torch.Tensor:
        """One network evaluation. x (B, 100, T) noisy mel, timesteps (B,), precomputed (B, C, T) -> (B, 200, T) fp32"""
        time_emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.dtype))  # (B, C)
        code_emb = precomputed.to(self.dtype)
        for layer in self.conditioning_timestep_integrator:
            code_emb = layer(code_emb, time_emb)  # (B, C, T)
        h = self.inp_block(x.to(self.dtype))  # (B, C, T)
        h = self.integrating_conv(torch.cat([h, code_emb], dim=1))  # (B, 2C, T) -> (B, C, T)
        for layer in self.layers:
            h = layer(h, time_emb)
        return self.out(h).float()  # (B, 200, T)


# --- sampling a mel -----------------------------------------------------------------------------


def output_frames(latent_frames: int) -> int:
    """Mel frames at 24 kHz for AR latents at 22.05 kHz codes (one code = 4 conditioning-mel frames)."""
    return latent_frames * 4 * SAMPLE_RATE // CONDITIONING_SAMPLE_RATE


def denormalize_mel(mel: torch.Tensor) -> torch.Tensor:
    """[-1, 1] normalised mel -> log-mel the vocoder takes."""
    return (mel + 1) / 2 * (MEL_LOG_MAX - MEL_LOG_MIN) + MEL_LOG_MIN


@torch.no_grad()
def sample_mel(
    net: DiffusionDecoder,
    latents: torch.Tensor,
    cond: torch.Tensor,
    *,
    steps: int,
    sampler: str,
    cond_free: bool,
    cond_free_k: float,
    temperature: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    spacing: str | None = None,
    shared_timestep: bool = False,
) -> torch.Tensor:
    """Diffuse AR latents into a denormalised mel: the reference's `do_spectrogram_diffusion`. -> (n, 100, frames)

    latents (n, T, d_ar); cond (1, 2C) voice latent. `noise` is the standard-normal x_T draw
    (n, 100, frames); x_T = noise * temperature, as the reference draws randn * temperature. When
    `noise` is None it is drawn from `generator` (else the global RNG), and so is DDPM's per-step
    noise, in the reference's order: with the same seed, sampler="ddpm" reproduces the reference.
    `spacing` overrides the sampler's timestep spacing ("even" = the reference's, "log_snr").
    `shared_timestep`: every row of a step has the same timestep, so embed it once (one row) and
    broadcast it, and embed the latents row by row; then no matrix product's row count depends on
    n, and a row's result is as alone (batched rendering wants that; the default keeps the
    reference's arithmetic).
    """
    schedule = samplers.schedule_for(sampler, steps, spacing)
    frames = output_frames(latents.shape[1])
    shape = (latents.shape[0], net.in_channels, frames)
    if shared_timestep and latents.shape[0] > 1:
        # Row by row (it runs once per clip, not per step): a convolution's algorithm may change with
        # the batch size, and with it a row's last bits (tiny fp32 model: 5e-7 of the embedding).
        rows = [net.timestep_independent(row, cond, frames, conditioning_free=cond_free) for row in latents.split(1)]
        precomputed = torch.cat([row[:1] for row in rows] + ([row[1:] for row in rows] if cond_free else []))
    else:
        precomputed = net.timestep_independent(latents, cond, frames, conditioning_free=cond_free)
    if noise is None:
        noise = samplers.standard_normal(shape, generator, latents.device)
    x_start = noise.float().to(latents.device) * temperature

    def network_call(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return net(x, timesteps[:1] if shared_timestep else timesteps, precomputed)

    model_fn = samplers.guided_model(network_call, schedule, cond_free=cond_free, cond_free_k=cond_free_k)
    mel = samplers.run_sampler(sampler, model_fn, schedule, x_start, generator=generator, progress=progress)
    return denormalize_mel(mel)[:, :, :frames]
