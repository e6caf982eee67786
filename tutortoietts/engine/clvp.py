"""CLVP: the contrastive text/speech-code model Tortoise uses to rerank autoregressive candidates.

Two pre-norm transformer encoders (RMSNorm, rotary positions, GELU-GLU feed-forward, final
LayerNorm) embed the text and each candidate's codes; a candidate's score is the cosine similarity
of the two mean-pooled, projected embeddings times exp(temperature). State-dict keys follow the
reference's x-transformers layout (use_xformers=True, as the official clvp2.pth); a load/save hook
on each encoder maps between that layout and the readable names used here.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from tutortoietts.errors import UserError

HEAD_DIM = 64  # x-transformers' default dim_head; CLVP does not override it
FF_MULT = 2
RMS_EPS = 1e-8


class RMSNorm(nn.Module):
    """x / rms(x) * g, with the rms floored at 1e-8 (x-transformers' RMSNorm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The norm in fp32: in bf16 a sum of 768 squares loses most of its digits.
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32) / math.sqrt(x.shape[-1])
        return (x.float() / rms.clamp(min=RMS_EPS)).to(x.dtype) * self.g


def rotary_tables(inv_freq: torch.Tensor, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, each frequency used for both halves. -> 2 x (T, rotary_dim)"""
    positions = torch.arange(length, device=inv_freq.device, dtype=torch.float32)
    angles = positions[:, None] * inv_freq.float()[None, :]  # (T, rotary_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, rotary_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary_dim features of every head (RoFormer, eq. 34, half-split pairing). # (B, H, T, Dh)"""
    rotary_dim = cos.shape[-1]
    turned, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    first, second = turned.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return torch.cat((turned * cos + rotated * sin, passed), dim=-1)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention; rotary positions on queries, keys and (as in CLVP's training) values."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = heads * HEAD_DIM
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape  # (B, T, C)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, HEAD_DIM).transpose(1, 2)  # (B, H, T, Dh)

        q, k, v = (apply_rotary(split_heads(proj(x)), cos, sin) for proj in (self.to_q, self.to_k, self.to_v))
        # No mask: at inference every text and code position is attended (the reference's masks are all True).
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh), scale Dh^-0.5
        return self.to_out(out.transpose(1, 2).reshape(batch, length, self.heads * HEAD_DIM))


class GluFeedForward(nn.Module):
    """proj -> value * GELU(gate) -> out (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim: int):
        super().__init__()
        inner = dim * FF_MULT
        self.proj = nn.Linear(dim, 2 * inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, T, inner) each
        return self.out(value * F.gelu(gate))


class EncoderBlock(nn.Module):
    """Pre-norm residual attention, then pre-norm residual feed-forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ff_norm = RMSNorm(dim)
        self.ff = GluFeedForward(dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ff(self.ff_norm(x))


# Our encoder names <-> the reference's CheckpointedXTransformerEncoder names (relative to the encoder).
# Its attn_layers.layers alternate attention (even index) and feed-forward (odd index) entries,
# each [norms, CheckpointedLayer(block), residual]; the GLU's projection sits at net.0, the output at net.3.
_REFERENCE_PREFIX = "transformer.attn_layers.layers."
_OURS_TO_REFERENCE = (
    (re.compile(r"blocks\.(\d+)\.attn_norm\.(.+)"), lambda i, rest: f"{_REFERENCE_PREFIX}{2 * i}.0.0.{rest}"),
    (re.compile(r"blocks\.(\d+)\.attn\.(.+)"), lambda i, rest: f"{_REFERENCE_PREFIX}{2 * i}.1.wrap.{rest}"),
    (re.compile(r"blocks\.(\d+)\.ff_norm\.(.+)"), lambda i, rest: f"{_REFERENCE_PREFIX}{2 * i + 1}.0.0.{rest}"),
    (re.compile(r"blocks\.(\d+)\.ff\.proj\.(.+)"), lambda i, rest: f"{_REFERENCE_PREFIX}{2 * i + 1}.1.wrap.net.0.proj.{rest}"),
    (re.compile(r"blocks\.(\d+)\.ff\.out\.(.+)"), lambda i, rest: f"{_REFERENCE_PREFIX}{2 * i + 1}.1.wrap.net.3.{rest}"),
)
_SIMPLE_RENAMES = {"inv_freq": "transformer.attn_layers.rotary_pos_emb.inv_freq",
                   "norm.weight": "transformer.norm.weight", "norm.bias": "transformer.norm.bias"}
_REFERENCE_LAYER = re.compile(re.escape(_REFERENCE_PREFIX) + r"(\d+)\.(0\.0|1\.wrap(?:\.net\.[03])?)\.(.+)")


def reference_name(ours: str) -> str:
    """Our encoder-relative parameter name -> the reference checkpoint's."""
    if ours in _SIMPLE_RENAMES:
        return _SIMPLE_RENAMES[ours]
    for pattern, build in _OURS_TO_REFERENCE:
        match = pattern.fullmatch(ours)
        if match:
            return build(int(match.group(1)), match.group(2))
    raise KeyError(ours)


def our_name(reference: str) -> str | None:
    """The reference checkpoint's encoder-relative name -> ours (None: not an encoder key we know)."""
    for ours, theirs in _SIMPLE_RENAMES.items():
        if reference == theirs:
            return ours
    match = _REFERENCE_LAYER.fullmatch(reference)
    if match is None:
        return None
    layer, slot, rest = int(match.group(1)), match.group(2), match.group(3)
    block, is_ff = divmod(layer, 2)
    if slot == "0.0":
        return f"blocks.{block}.{'ff_norm' if is_ff else 'attn_norm'}.{rest}"
    if is_ff and slot.endswith("net.0"):
        return f"blocks.{block}.ff.{rest}"  # rest = "proj.weight" / "proj.bias"
    if is_ff and slot.endswith("net.3"):
        return f"blocks.{block}.ff.out.{rest}"
    if not is_ff and slot == "1.wrap":
        return f"blocks.{block}.attn.{rest}"
    return None


class Encoder(nn.Module):
    """A stack of EncoderBlocks with rotary positions and a final LayerNorm. (B, T, C) -> (B, T, C)"""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads) for _ in range(depth))
        # x-transformers rotates max(dim_head / 2, 32) features of each head, base 10000.
        rotary_dim = max(HEAD_DIM // 2, 32)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
        self.norm = nn.LayerNorm(dim)
        self.register_state_dict_post_hook(_save_reference_names)
        self.register_load_state_dict_pre_hook(_load_reference_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary_tables(self.inv_freq, x.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)


def _reference_order(name: str) -> int:
    """The reference lists layer weights, then the rotary buffer (a later child), then the final norm."""
    return 0 if name.startswith(_REFERENCE_PREFIX) else 1 if name.endswith("inv_freq") else 2


def _save_reference_names(module, state_dict, prefix, local_metadata) -> None:
    entries = [(reference_name(k[len(prefix):]), state_dict.pop(k)) for k in [k for k in state_dict if k.startswith(prefix)]]
    for name, value in sorted(entries, key=lambda entry: _reference_order(entry[0])):  # stable sort
        state_dict[prefix + name] = value


def _load_reference_names(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        ours = our_name(key[len(prefix):])
        if ours is not None:  # unknown keys stay as they are, so strict loading names them
            state_dict[prefix + ours] = state_dict.pop(key)


class CLVP(nn.Module):
    """Scores how well each candidate code sequence speaks a text (reference: tortoise/models/clvp.py)."""

    def __init__(
        self,
        *,
        dim_text: int = 512,
        dim_speech: int = 512,
        dim_latent: int = 512,
        num_text_tokens: int = 256,
        text_enc_depth: int = 6,
        text_seq_len: int = 120,  # only the non-xformers variant has position tables of this size
        text_heads: int = 8,
        num_speech_tokens: int = 8192,
        speech_enc_depth: int = 6,
        speech_heads: int = 8,
        speech_seq_len: int = 250,  # as text_seq_len
        text_mask_percentage: float = 0,  # training-only token dropout
        voice_mask_percentage: float = 0,  # training-only token dropout
        wav_token_compression: int = 1024,  # unused by the reference too
        use_xformers: bool = False,
    ):
        super().__init__()
        if not use_xformers:
            raise UserError("CLVP with use_xformers=false (the older transformer layout) is not supported; "
                            "the official clvp2 uses use_xformers=true")
        # Registered in the reference's order, so state_dict() lists the keys in the same order.
        self.text_emb = nn.Embedding(num_text_tokens, dim_text)
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)
        self.speech_emb = nn.Embedding(num_speech_tokens, dim_speech)
        self.to_speech_latent = nn.Linear(dim_speech, dim_latent, bias=False)
        self.text_transformer = Encoder(dim_text, text_enc_depth, text_heads)
        self.speech_transformer = Encoder(dim_speech, speech_enc_depth, speech_heads)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def embed(self, tokens: torch.Tensor, embedding: nn.Embedding, encoder: Encoder, projection: nn.Linear) -> torch.Tensor:
        """Unit-length latent of each token sequence. (B, T) -> (B, dim_latent) float32"""
        hidden = encoder(embedding(tokens))  # (B, T, C)
        pooled = hidden.float().mean(dim=1)  # every position counts: the reference's mask is all True
        latent = projection(pooled.to(projection.weight.dtype)).float()
        return F.normalize(latent, p=2, dim=-1)

    @torch.no_grad()
    def score(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Similarity of the text to each candidate. text_ids (1, n), codes (k, T) -> (k,) float32

        = reference clvp(F.pad(text, (0, 1)).repeat(k, 1), codes, return_loss=False); the text is
        encoded once, not k times, since every row of the repeated batch is the same.
        """
        if text_ids.dim() != 2 or text_ids.shape[0] != 1:
            raise ValueError(f"text_ids must be (1, n), got {tuple(text_ids.shape)}")
        text = F.pad(text_ids, (0, 1))  # the stop/pad id api.tts() appends
        text_latent = self.embed(text, self.text_emb, self.text_transformer, self.to_text_latent)  # (1, D)
        speech_latent = self.embed(codes, self.speech_emb, self.speech_transformer, self.to_speech_latent)  # (k, D)
        return (speech_latent @ text_latent[0]) * self.temperature.float().exp()

    def forward(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.score(text_ids, codes)
