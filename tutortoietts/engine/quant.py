"""Weight-only int8 quantisation: an offline transform plus a runtime swap of nn.Linear for Int8Linear.

The autoregressive decode step reads every weight once per generated token, so on a CPU (and
for small batches on a GPU) its speed is set by memory bandwidth, not arithmetic. Storing the
weights as int8 with one fp scale per output channel quarters the bytes read per step; the
matmul itself still runs in the activation dtype (gpt-fast's recipe).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight[o, i] ~= q[o, i] * scales[o]."""
    weight = weight.detach().float()  # (out, in)
    # The largest magnitude of each row maps to 127, so no row clips; an all-zero row keeps scale 1
    # rather than dividing by zero.
    row_max = weight.abs().amax(dim=1)  # (out,)
    scales = torch.where(row_max > 0, row_max / 127.0, torch.ones_like(row_max))
    q = torch.round(weight / scales[:, None]).clamp_(-128, 127).to(torch.int8)  # (out, in)
    return q, scales


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with a per-output-channel scale; forward in the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # Buffers, not parameters: nothing trains them, and .to(dtype) must leave the int8 weight alone.
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantise an existing Linear's weight; scales and bias keep the Linear's dtype and device."""
        dtype, device = linear.weight.dtype, linear.weight.device
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=dtype, device=device)
        q, scales = quantize_weight_int8(linear.weight)
        module.weight.copy_(q)
        module.scales.copy_(scales.to(dtype))
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        # Dequantise by scaling the output, not the weight: one multiply per output element
        # instead of one per weight element.
        y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, weight=int8"


def quantize_int8(model: nn.Module, include: Callable[[str, nn.Linear], bool] | None = None) -> nn.Module:
    """Swap every nn.Linear of `model` (those `include(name, module)` accepts) for an Int8Linear, in place.

    Returns the model. Embeddings, norms and convolutions are left in their dtype: they are a
    small share of the bytes read per decode step.
    """
    swaps = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear and (include is None or include(name, module)):
            swaps.append(name)
    for name in swaps:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, Int8Linear.from_linear(getattr(parent, child_name)))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: what one full pass over the weights reads from memory."""
    tensors = list(model.parameters()) + list(model.buffers())
    seen = set()
    total = 0
    for tensor in tensors:
        # Tied weights (the reference ties mel_embedding to the GPT's wte) are read once.
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def is_decode_weight(name: str, module: nn.Linear) -> bool:
    """The Linears a decode step reads: every transformer block's and the mel head (checkpoint names)."""
    return name.startswith("gpt.h.") or name == "mel_head"


def quantize_autoregressive(model: nn.Module) -> nn.Module:
    """precision="int8": the autoregressive model's block and head weights to int8, in place.

    The conditioning encoder and embeddings stay in the activation dtype: they run once per
    clip, not once per code, so quantising them would cost fidelity for no speed.
    """
    return quantize_int8(model, include=is_decode_weight)
