"""Tortoise's autoregressive model (the reference's UnifiedVoice): a GPT-2 over voice, text and mel codes.

One sequence per sample: [conditioning latent | start_text, text..., 0, 0 | start_mel, codes...],
each part with its own learned position table (GPT-2's own position table is unused). The
network is checkpoint-compatible with the official autoregressive.pth; inference runs with a
static KV cache written in place by position (gpt-fast style) and torch's SDPA attention. The
sampling loop and the logits processors live in decoding.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from tutortoietts.engine.timing import NO_INSTRUMENTS, Instruments
from tutortoietts.errors import UserError

STOP_TEXT_TOKEN = 0  # text id the reference appends after the text (also tts()'s own pad value)
CALM_TOKEN = 83  # DVAE code for silence; what fix_codes writes from the stop token on
FIX_TAIL = (45, 45, 248)  # the last three codes fix_autoregressive_output forces (DVAE end-of-clip codes)
CALM_RUN_LIMIT = 8  # more calm tokens in a row than this end the speech (api.py tts())

# Attention kernels for cached decoding. cuDNN's is left out: it builds an execution plan per
# key length, i.e. anew at every step (measured on an H100 in bf16: ~50 ms/step instead of a few).
DECODE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# ---------------------------------------------------------------------------------------------
# Conditioning encoder: 80-band mel of a reference clip -> one latent vector.
# ---------------------------------------------------------------------------------------------


def group_count(channels: int) -> int:
    """GroupNorm groups the reference's `normalization()` picks: 32, fewer for narrow layers."""
    groups = 8 if channels <= 16 else 16 if channels <= 64 else 32
    while channels % groups:
        groups //= 2
    return groups


class ConditioningAttention(nn.Module):
    """Residual full self-attention over time, channels first (the reference's AttentionBlock)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        batch, channels, frames = x.shape
        # Normalise in fp32 whatever the module dtype: group statistics over long clips lose
        # too much in bf16/fp16 (the reference's GroupNorm32 does the same).
        h = F.group_norm(x.float(), self.norm.num_groups, self.norm.weight.float(), self.norm.bias.float(), self.norm.eps)
        qkv = self.qkv(h.to(x.dtype))  # (B, 3C, T)
        # The checkpoint packs channels head-major, then q/k/v inside each head.
        qkv = qkv.view(batch, self.heads, 3, channels // self.heads, frames)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=2)  # each (B, nh, T, hs)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        a = a.transpose(-1, -2).reshape(batch, channels, frames)  # (B, C, T)
        return x + self.proj_out(a)


class ConditioningEncoder(nn.Module):
    """1x1 conv to the model width, six attention blocks, then the first frame's vector."""

    def __init__(self, mel_channels: int, dim: int, heads: int, blocks: int = 6):
        super().__init__()
        self.init = nn.Conv1d(mel_channels, dim, kernel_size=1)
        self.attn = nn.Sequential(*[ConditioningAttention(dim, heads) for _ in range(blocks)])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, 80, T) -> (B, C)
        h = self.attn(self.init(mel))  # (B, C, T)
        # Frame 0 attends to the whole clip, so it serves as the summary (the reference's mean=False).
        return h[:, :, 0]


class LearnedPositions(nn.Module):
    """A learned position table; rows are read by index, never through an arange per call."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)

    @property
    def rows(self) -> int:
        return self.emb.num_embeddings


# ---------------------------------------------------------------------------------------------
# GPT-2 (transformers 4.31's GPT2Model without token or position tables) with a static KV cache.
# ---------------------------------------------------------------------------------------------


class KVCache(nn.Module):
    """Preallocated keys and values of one layer, written in place by sequence position."""

    def __init__(self, max_batch: int, heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (max_batch, heads, max_seq, head_dim)
        # Non-persistent: the cache is scratch memory, never part of a checkpoint.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def fits(self, max_batch: int, max_seq: int, dtype: torch.dtype, device) -> bool:
        batch, _, seq, _ = self.k.shape
        return batch >= max_batch and seq >= max_seq and self.k.dtype == dtype and self.k.device == torch.device(device)


@dataclass(frozen=True)
class RowPositions:
    """Cache positions that differ per row, for a forward of several tokens over the KV cache.

    Speculative decoding verifies k proposed codes per row in one pass, and rows that accepted
    different numbers of codes stand at different positions. Each row's new keys and values are
    written at its own positions; query t of row b sees cache positions 0..positions[b, t].
    """

    positions: torch.Tensor  # (B, T) int64: cache position of each new token
    visible: torch.Tensor  # (B, 1, T, L) bool: which of the first L cache positions each query sees
    length: int  # L: cache positions attended, past every row's last new token

    @classmethod
    def of(cls, positions: torch.Tensor, length: int) -> "RowPositions":
        keys = torch.arange(length, device=positions.device)
        return cls(positions, (keys <= positions[:, :, None])[:, None], length)


@dataclass(frozen=True)
class SlotPositions:
    """One new token per row of a static KV cache, each row (slot) at its own position.

    Batched decoding across chunks (batching.py): every slot holds one candidate of some chunk,
    with its own text length and progress. Row b writes its keys and values at positions[b] and
    attends to cache positions 0..positions[b] of its own row; the rest of the first `length`
    positions are masked to -inf, so they add exactly zero (stale entries there must be finite).
    Shapes depend only on (B, length): with length = the whole cache the step is static, as a
    captured CUDA graph needs.
    """

    positions: torch.Tensor  # (B,) int64: cache position of each row's new token
    length: int  # L: cache positions attended, past every row's position


class PrefixCapture:
    """Marker for a forward that writes no cache: each layer's keys and values are collected instead.

    A chunk's prefix is run once this way; its keys and values are then copied into every slot
    that one of its candidates takes, whenever that happens (see batching.py).
    """

    def __init__(self):
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: (1, nh, T, hs) keys, values


def checkpoint_weights_to_linear(module, state_dict, prefix, *args) -> None:
    """Load hook: GPT-2's Conv1D stores weights (in, out); our nn.Linear wants (out, in).

    Also drops the causal-mask buffers (`attn.bias`, `attn.masked_bias`) that checkpoints written
    by older transformers versions carry: SDPA needs no mask table.
    """
    for name in module.conv1d_weights:
        key = prefix + name + ".weight"
        if key in state_dict and state_dict[key].dim() == 2:
            state_dict[key] = state_dict[key].t().contiguous()
    for name in ("bias", "masked_bias"):
        state_dict.pop(prefix + name, None)


def linear_weights_to_checkpoint(module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: write weights back in GPT-2's Conv1D layout, so our keys and shapes equal the reference's."""
    for name in module.conv1d_weights:
        key = prefix + name + ".weight"
        if key in state_dict and state_dict[key].dim() == 2 and state_dict[key].is_floating_point():
            state_dict[key] = state_dict[key].t()


class Conv1DLayout(nn.Module):
    """Base of the GPT-2 modules whose nn.Linear weights the checkpoint stores transposed.

    Plain nn.Linear (not a Conv1D look-alike) keeps F.linear's fast path and lets the int8
    weight-only swap in quant.py find these layers.
    """

    conv1d_weights: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.register_load_state_dict_pre_hook(checkpoint_weights_to_linear)
        self.register_state_dict_post_hook(linear_weights_to_checkpoint)


class SelfAttention(Conv1DLayout):
    """Causal multi-head self-attention (GPT-2's fused c_attn), optionally through a KV cache."""

    conv1d_weights = ("c_attn", "c_proj")

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:  # (B, T, C)
        batch, length, dim = x.shape
        q, k, v = self.c_attn(x).split(dim, dim=2)
        q = q.view(batch, length, self.heads, -1).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(batch, length, self.heads, -1).transpose(1, 2)
        v = v.view(batch, length, self.heads, -1).transpose(1, 2)
        if isinstance(input_pos, (SlotPositions, PrefixCapture)):
            return self.c_proj(self.slot_attention(q, k, v, input_pos))
        if isinstance(input_pos, RowPositions):
            # Per-row positions (speculative verification): scatter each row's new keys and values
            # to its own places, then attend through the mask. Positions past a row's accepted
            # codes hold stale entries; the mask hides them and the next write replaces them.
            index = input_pos.positions[:, None, :, None].expand(batch, self.heads, length, k.shape[-1])
            self.kv_cache.k[:batch].scatter_(2, index, k)
            self.kv_cache.v[:batch].scatter_(2, index, v)
            keys, values = self.kv_cache.k[:batch, :, : input_pos.length], self.kv_cache.v[:batch, :, : input_pos.length]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=input_pos.visible)
        elif input_pos is None or length > 1:
            if input_pos is not None:
                # Prefill: a fresh sequence from position 0. The cache rows may outnumber this
                # batch (one shared prefix for every sample): the copy broadcasts it to all rows.
                assert input_pos == 0, "multi-token cache writes must start a fresh sequence"
                self.kv_cache.k[:, :, :length] = k
                self.kv_cache.v[:, :, :length] = v
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Decode: one new token per row; it sees every cached position up to its own, so no
            # mask is needed, only a view of the cache.
            end = input_pos + 1
            self.kv_cache.k[:batch, :, input_pos:end] = k
            self.kv_cache.v[:batch, :, input_pos:end] = v
            keys, values = self.kv_cache.k[:batch, :, :end], self.kv_cache.v[:batch, :, :end]
            y = F.scaled_dot_product_attention(q, keys, values) if x.is_cuda else cached_attention(q, keys, values)
        y = y.transpose(1, 2).reshape(batch, length, dim)  # (B, T, C)
        return self.c_proj(y)

    def slot_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where) -> torch.Tensor:
        """Attention for batched decoding across chunks (see SlotPositions, PrefixCapture). -> (B, T, C)"""
        batch, heads, length, head_dim = q.shape
        if isinstance(where, PrefixCapture):
            where.kv.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # as prefill computes it
        else:
            # Row b's new key and value at its own position: an index_put (scatter_ copied the whole
            # cache on the CPU at every call: 4.3 s of a 5.3 s step at 32 rows, full size).
            rows = torch.arange(batch, device=q.device)
            self.kv_cache.k[rows, :, where.positions] = k[:, :, 0]  # (B, nh, hs)
            self.kv_cache.v[rows, :, where.positions] = v[:, :, 0]
            keys, values = self.kv_cache.k[:batch, :, : where.length], self.kv_cache.v[:batch, :, : where.length]
            hidden = torch.arange(where.length, device=q.device) > where.positions[:, None]  # (B, L): not yet this row's
            if q.is_cuda:
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=~hidden[:, None, None])
            else:
                y = masked_cached_attention(q, keys, values, hidden[:, None, None])
        return y.transpose(1, 2).reshape(batch, length, heads * head_dim)


def masked_cached_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """cached_attention with positions a row must not see: (B, nh, 1, hs), hidden (B, 1, 1, L) bool -> (B, nh, 1, hs).

    Hidden scores become -inf before the fp32 softmax, so their probabilities are exactly 0 and
    (their values being finite) they add exactly nothing: a row's result does not depend on
    what other rows, or earlier occupants of its own row, left past its position.
    """
    scores = torch.matmul(q, keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, nh, 1, L)
    probs = scores.float().masked_fill(hidden, float("-inf")).softmax(dim=-1)
    return torch.matmul(probs.to(values.dtype), values)


def cached_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One query row against the cache, as GPT-2 computes it: (B, nh, 1, hs) -> (B, nh, 1, hs).

    For the CPU, where SDPA is slower on one query row: per layer at batch 16, bf16, 300 cached
    positions, 2.4 ms against 4.6 ms (math kernel) and 4.9 ms (flash) on a 2-core EPYC.
    Softmax runs in fp32.
    """
    scores = torch.matmul(q, keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, nh, 1, L)
    return torch.matmul(scores.float().softmax(dim=-1).to(values.dtype), values)


class FeedForward(Conv1DLayout):
    """GPT-2's MLP: 4x expansion with the tanh approximation of GELU ("gelu_new")."""

    conv1d_weights = ("c_fc", "c_proj")

    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim)

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The block stack and GPT-2's closing LayerNorm, fed with embeddings."""

    def __init__(self, layers: int, dim: int, heads: int):
        super().__init__()
        self.h = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        # Blocks left out, each replaced by the identity (its residual branch dropped): the layer
        # ablation study's switch (devtools/ablation.py, a preset's experimental ar_layers). Empty
        # for every normal run.
        self.skipped: frozenset[int] = frozenset()

    def forward(self, x: torch.Tensor, input_pos=None, layers=None) -> torch.Tensor:  # (B, T, C)
        """`layers`: the block indices to run this call (a speculative draft's first N), else all but `skipped`."""
        for index, block in enumerate(self.h):
            if (index in layers) if layers is not None else (index not in self.skipped):
                x = block(x, input_pos)
        return self.ln_f(x)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


class AutoregressiveModel(nn.Module):
    """UnifiedVoice for inference: same constructor keywords, same state dict, faster decoding."""

    def __init__(
        self,
        layers: int = 8,  # transformer blocks (official: 30)
        model_dim: int = 512,  # width (official: 1024)
        heads: int = 8,  # attention heads (official: 16)
        max_text_tokens: int = 120,  # text length the position table covers, less 2 (official: 402)
        max_mel_tokens: int = 250,  # code length the position table covers, less 2 + conditioning (official: 604)
        max_conditioning_inputs: int = 1,  # only sizes the mel position table (official: 2)
        mel_length_compression: int = 1024,  # audio samples per code; latents() needs no wav lengths
        number_text_tokens: int = 256,  # text vocabulary (official: 255)
        start_text_token: int | None = None,  # defaults to number_text_tokens * types
        number_mel_codes: int = 8194,  # 8192 DVAE codes + start + stop
        start_mel_token: int = 8192,
        stop_mel_token: int = 8193,
        train_solo_embeddings: bool = False,  # training only; kept so such checkpoints still load
        use_mel_codes_as_input: bool = True,  # the raw-mel input variant was never released
        checkpointing: bool = True,  # training only
        types: int = 1,  # text "types" widen the text vocabulary; official: 1
    ):
        super().__init__()
        if not use_mel_codes_as_input:
            raise ValueError("use_mel_codes_as_input=False (the MelEncoder input variant) is not supported")
        self.start_text_token = number_text_tokens * types if start_text_token is None else start_text_token
        self.start_mel_token = start_mel_token
        self.stop_mel_token = stop_mel_token
        self.number_mel_codes = number_mel_codes
        self.model_dim = model_dim
        self.mel_length_compression = mel_length_compression

        self.conditioning_encoder = ConditioningEncoder(80, model_dim, heads)
        self.text_embedding = nn.Embedding(number_text_tokens * types + 1, model_dim)
        self.mel_embedding = nn.Embedding(number_mel_codes, model_dim)
        self.gpt = Transformer(layers, model_dim, heads)
        self.mel_pos_embedding = LearnedPositions(max_mel_tokens + 2 + max_conditioning_inputs, model_dim)
        self.text_pos_embedding = LearnedPositions(max_text_tokens + 2, model_dim)
        if train_solo_embeddings:
            self.mel_solo_embedding = nn.Parameter(torch.zeros(1, 1, model_dim))
            self.text_solo_embedding = nn.Parameter(torch.zeros(1, 1, model_dim))
        self.final_norm = nn.LayerNorm(model_dim)
        self.text_head = nn.Linear(model_dim, number_text_tokens * types + 1)
        self.mel_head = nn.Linear(model_dim, number_mel_codes)

    # -- conditioning ---------------------------------------------------------------------------

    @torch.no_grad()
    def conditioning_latent(self, mels: torch.Tensor) -> torch.Tensor:
        """Mean of the per-clip conditioning vectors: mels (b, clips, 80, s) or (b, 80, s) -> (b, C)."""
        if mels.dim() == 3:
            mels = mels[:, None]
        batch, clips, bands, frames = mels.shape
        dtype = self.mel_embedding.weight.dtype
        # All clips in one encoder batch; they are independent until the mean.
        per_clip = self.conditioning_encoder(mels.reshape(batch * clips, bands, frames).to(dtype))  # (b*clips, C)
        return per_clip.view(batch, clips, -1).mean(dim=1)

    def embed_prefix(self, cond: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """The shared prefix of every sequence: cond (1, C), text_ids (1, n) -> (1, n + 4, C).

        The text gets tts()'s pad, then the model's own stop token and start token:
        [start_text, ids..., 0, 0], with text positions 0.. n+2.
        """
        text = F.pad(text_ids.long(), (0, 2), value=STOP_TEXT_TOKEN)
        text = F.pad(text, (1, 0), value=self.start_text_token)  # (1, n + 3)
        positions = self.text_pos_embedding.rows
        if text.shape[1] > positions:
            raise UserError(
                f"text too long for the autoregressive model: {text_ids.shape[1]} tokens, at most {positions - 3}; "
                "split it into shorter chunks"
            )
        text_emb = self.text_embedding(text) + self.text_pos_embedding.emb.weight[: text.shape[1]]  # (1, n+3, C)
        return torch.cat([cond[:, None].to(text_emb.dtype), text_emb], dim=1)

    def mel_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Code logits in fp32 from the transformer output: (..., C) -> (..., codes)."""
        return self.mel_head(self.final_norm(hidden)).float()

    # -- latents for the diffusion decoder ------------------------------------------------------

    @torch.no_grad()
    def latents(self, cond: torch.Tensor, text_ids: torch.Tensor, codes: torch.Tensor,
                sampling_positions: bool = False) -> torch.Tensor:
        """Last hidden states (after final_norm) at each code's input position: -> (k, T, C).

        The reference feeds [start, codes..., stop] and drops the last two outputs; the model is
        causal, so feeding only [start, codes[:-1]] gives the same T states for two fewer tokens.
        sampling_positions: give the inputs the mel positions the cached sampling loop gives them
        (0 for the start code, then 2, 3, ...; see decoding.py) instead of the training layout
        (0, 1, 2, ...). Those are the latents sample(on_step=...) reports as it goes, and what the
        reference's stream generator hands api_fast's HiFi decoder (with its kv_cache on).
        """
        count, length = codes.shape
        if length + 1 > self.mel_pos_embedding.rows:
            raise UserError(f"too many codes for the autoregressive model: {length}, at most {self.mel_pos_embedding.rows - 1}")
        device = self.mel_embedding.weight.device
        prefix = self.embed_prefix(cond.to(device), text_ids.to(device))  # (1, P, C)
        mel_inputs = F.pad(codes[:, :-1].to(device).long(), (1, 0), value=self.start_mel_token)  # (k, T)
        positions = torch.arange(length, device=device)
        if sampling_positions:
            positions = positions + (positions > 0)  # 0, 2, 3, ..., length
        mel_emb = self.mel_embedding(mel_inputs) + self.mel_pos_embedding.emb.weight[positions]  # (k, T, C)
        x = torch.cat([prefix.expand(count, -1, -1), mel_emb], dim=1)  # (k, P + T, C)
        hidden = self.gpt(x)
        return self.final_norm(hidden[:, -length:])

    # -- cached decoding ------------------------------------------------------------------------

    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        """Allocate each layer's KV cache, or keep the current one if it is big enough (idempotent)."""
        weight = self.mel_head.weight
        dtype = weight.dtype if weight.is_floating_point() else self.final_norm.weight.dtype
        for block in self.gpt.h:
            attn = block.attn
            if attn.kv_cache is None or not attn.kv_cache.fits(max_batch, max_seq, dtype, weight.device):
                attn.kv_cache = None  # free the old buffers before allocating new ones
                attn.kv_cache = KVCache(max_batch, attn.heads, max_seq, self.model_dim // attn.heads, dtype, weight.device)

    def keep_layers(self, kept) -> None:
        """Run only these transformer blocks from now on (experimental layer ablation); () = every block.

        The others become the identity: their residual branches are dropped, nothing else changes.
        """
        total = len(self.gpt.h)
        outside = [index for index in kept if not 0 <= index < total]
        if outside:
            raise UserError(f"ar_layers names block {outside[0]}, but this autoregressive model has blocks 0 to {total - 1}")
        self.gpt.skipped = frozenset(range(total)) - frozenset(kept) if kept else frozenset()

    def clear_caches(self) -> None:
        """Release the KV cache memory."""
        for block in self.gpt.h:
            block.attn.kv_cache = None

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        """Run the prefix plus the start code from cache position 0: (1, P, C) -> next-code logits (1, codes).

        The start code takes mel position 0. The cache rows of every sample get these keys and values.
        """
        start = torch.tensor([[self.start_mel_token]], device=prefix.device)
        start_emb = self.mel_embedding(start) + self.mel_pos_embedding.emb.weight[0]  # (1, 1, C)
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(torch.cat([prefix, start_emb], dim=1), input_pos=0)  # (1, P + 1, C)
        return self.mel_logits(hidden[:, -1])

    def decode_one_token(self, tokens: torch.Tensor, input_pos: int, mel_position: int, layers=None) -> torch.Tensor:
        """Feed one code per row at cache position `input_pos`: tokens (B, 1) -> next-code logits (B, codes).

        `mel_position` is the row of the mel position table added to the code's embedding; see
        decoding.py for why it is not simply the code's index. `layers`: see Transformer.forward.
        """
        x = self.mel_embedding(tokens) + self.mel_pos_embedding.emb.weight[mel_position]  # (B, 1, C)
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(x, input_pos=input_pos, layers=layers)
        return self.mel_logits(hidden[:, -1])

    def decode_rows(self, tokens: torch.Tensor, positions: RowPositions, mel_positions: torch.Tensor,
                    layers=None) -> torch.Tensor:
        """Feed T codes per row, each row at its own cache positions: tokens (B, T) -> logits (B, T, codes).

        Logit t of a row is the next-code distribution after its token t (causal within the T).
        `mel_positions` (B, T): rows of the mel position table, as decode_one_token's.
        """
        x = self.mel_embedding(tokens) + self.mel_pos_embedding.emb.weight[mel_positions]  # (B, T, C)
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(x, input_pos=positions, layers=layers)
        return self.mel_logits(hidden)

    def prefill_capture(self, prefix: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """prefill's pass without touching the cache: (1, P, C) -> next-code logits (1, codes) and, per
        layer, the keys and values (1, nh, P + 1, hs) of the prefix and start code, for load_slot."""
        start = torch.tensor([[self.start_mel_token]], device=prefix.device)
        start_emb = self.mel_embedding(start) + self.mel_pos_embedding.emb.weight[0]  # (1, 1, C)
        capture = PrefixCapture()
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(torch.cat([prefix, start_emb], dim=1), input_pos=capture)  # (1, P + 1, C)
        return self.mel_logits(hidden[:, -1]), capture.kv

    def load_slot(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a captured prefix (prefill_capture) into cache row `slot`, positions 0..P."""
        for block, (keys, values) in zip(self.gpt.h, kv):
            cache = block.attn.kv_cache
            cache.k[slot, :, : keys.shape[2]] = keys[0]
            cache.v[slot, :, : values.shape[2]] = values[0]

    def resize_caches(self, length: int) -> None:
        """Give every layer's cache exactly `length` positions, keeping what fits (the rest zeroed).

        Batched decoding on the CPU keeps the cache as long as the window it attends: the CPU's batched
        matrix products copy a strided view (a window of a longer cache) before using it, which cost
        three times the products themselves at 32 rows.
        """
        for block in self.gpt.h:
            old = block.attn.kv_cache
            batch, heads, seq, head_dim = old.k.shape
            if seq == length:
                continue
            new = KVCache(batch, heads, length, head_dim, old.k.dtype, old.k.device)
            keep = min(seq, length)
            new.k[:, :, :keep] = old.k[:, :, :keep]
            new.v[:, :, :keep] = old.v[:, :, :keep]
            block.attn.kv_cache = new  # one layer at a time: the peak is the cache plus one layer's copy

    def clear_slot(self, slot: int) -> None:
        """Zero cache row `slot`: what a row that went non-finite left must not reach the next occupant."""
        for block in self.gpt.h:
            block.attn.kv_cache.k[slot].zero_()
            block.attn.kv_cache.v[slot].zero_()

    def decode_slots(self, tokens: torch.Tensor, positions: torch.Tensor, mel_positions: torch.Tensor,
                     length: int) -> torch.Tensor:
        """One code per slot, each at its own cache position: tokens (B, 1), positions (B,), mel_positions
        (B,) -> next-code logits (B, codes). Attends the first `length` cache positions (see SlotPositions).

        Everything per row is a tensor, so with a fixed `length` the shapes never change: the step a
        CUDA graph captures once per batch size (batching.DecodeStep).
        """
        x = self.mel_embedding(tokens) + self.mel_pos_embedding.emb.weight[mel_positions][:, None]  # (B, 1, C)
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(x, input_pos=SlotPositions(positions, length))
        return self.mel_logits(hidden[:, -1])

    # The same steps with the latents they produce (the hidden state after final_norm, before the
    # head), for a loop that reports them (decoding.generate_codes's on_step): prefill and
    # decode_one_token stop at the logits so a compiled or speculative step stays what it is.

    def prefill_latent(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefill's pass, stopped before the head: (1, P, C) -> the start code's latent (1, C)."""
        start = torch.tensor([[self.start_mel_token]], device=prefix.device)
        start_emb = self.mel_embedding(start) + self.mel_pos_embedding.emb.weight[0]  # (1, 1, C)
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(torch.cat([prefix, start_emb], dim=1), input_pos=0)  # (1, P + 1, C)
        return self.final_norm(hidden[:, -1])

    def decode_latent(self, tokens: torch.Tensor, input_pos: int, mel_position: int) -> torch.Tensor:
        """decode_one_token's pass, stopped before the head: tokens (B, 1) -> latents (B, C)."""
        x = self.mel_embedding(tokens) + self.mel_pos_embedding.emb.weight[mel_position]  # (B, 1, C)
        with sdpa_kernel(DECODE_ATTENTION):
            hidden = self.gpt(x, input_pos=input_pos)
        return self.final_norm(hidden[:, -1])

    def latent_logits(self, latents: torch.Tensor) -> torch.Tensor:
        """Next-code logits in fp32 from latents (..., C): mel_logits without its final_norm."""
        return self.mel_head(latents).float()

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        text_ids: torch.Tensor,
        *,
        num_samples: int,
        max_mel_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        length_penalty: float = 1.0,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        instruments: Instruments = NO_INSTRUMENTS,
        on_step=None,
    ) -> torch.Tensor:
        """Sample code sequences, as the reference's tts() does: -> (num_samples, max_mel_tokens).

        on_step(step, codes (B,), latents (B, C)), if given, hears every step of every batch in
        turn (see decoding.generate_codes): how streaming takes codes and latents as they come.

        Each row stops at the stop token and is padded with it to max_mel_tokens. Batches of
        `batch_size` (all at once by default) run one after another, drawing from `generator`;
        where batch_size does not divide num_samples the last batch is smaller (the reference
        would silently drop those samples).
        `length_penalty` is accepted for the reference's signature: transformers only applies it
        in beam search, so with sampling it changes nothing, here as there.
        """
        from tutortoietts.engine.decoding import generate_codes, validate_sampling

        validate_sampling(num_samples, max_mel_tokens, temperature, top_p, repetition_penalty, batch_size)
        # The last code fed back to the model takes mel position max_mel_tokens (see decoding.py).
        if max_mel_tokens >= self.mel_pos_embedding.rows:
            raise UserError(f"max_mel_tokens must be at most {self.mel_pos_embedding.rows - 1}, got {max_mel_tokens}")
        device = self.mel_embedding.weight.device
        prefix = self.embed_prefix(cond.to(device), text_ids.to(device))  # (1, P, C), computed once
        batch_size = batch_size or num_samples
        batches = []
        for first in range(0, num_samples, batch_size):
            batches.append(
                generate_codes(
                    self,
                    prefix,
                    batch=min(batch_size, num_samples - first),
                    max_new_tokens=max_mel_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    repetition_penalty=repetition_penalty,
                    generator=generator,
                    instruments=instruments,
                    on_step=on_step,
                )
            )
        return torch.cat(batches, dim=0)


# ---------------------------------------------------------------------------------------------
# Post-processing of sampled codes.
# ---------------------------------------------------------------------------------------------


def fix_codes(codes: torch.Tensor, stop_token: int = 8193) -> torch.Tensor:
    """The reference's fix_autoregressive_output on each row: (k, T) -> (k, T), a new tensor.

    A row with a stop token becomes calm (silence) from its first stop token on, and its last
    three codes become the DVAE's end-of-clip codes, as the diffusion decoder was trained on.
    A row without one is left as it is.
    """
    length = codes.shape[1]
    is_stop = codes == stop_token  # (k, T)
    has_stop = is_stop.any(dim=1)  # (k,)
    first_stop = torch.where(has_stop, is_stop.int().argmax(dim=1), length)  # (k,)
    after_stop = torch.arange(length, device=codes.device) >= first_stop[:, None]  # (k, T)
    fixed = codes.masked_fill(after_stop, CALM_TOKEN)
    fixed[has_stop, -len(FIX_TAIL):] = torch.tensor(FIX_TAIL, dtype=codes.dtype, device=codes.device)
    return fixed


def trim_latents_at_silence(codes: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Cut latents where the speech has ended: codes (T,), latents (T, C) -> (T', C).

    The cut is at the first code that makes more than CALM_RUN_LIMIT calm codes in a row; the
    run before it gives the diffusion decoder room to end the speech softly (api.py tts()).
    """
    run = 0
    for index, code in enumerate(codes.tolist()):
        run = run + 1 if code == CALM_TOKEN else 0
        if run > CALM_RUN_LIMIT:
            return latents[:index]
    return latents
