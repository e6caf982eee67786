"""Int8 weight-only quantisation: layer fidelity, the module swap, and the autoregressive model under it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import report
from tutortoietts.engine.quant import Int8Linear, quantize_int8, quantize_weight_int8, weight_bytes


def test_weight_roundtrip_error_is_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(96, 200)
    q, scales = quantize_weight_int8(weight)
    assert q.dtype == torch.int8 and scales.shape == (96,)
    error = (q.float() * scales[:, None] - weight).abs()
    # Rounding to the nearest step never errs by more than half a step of that row.
    worst = (error / scales[:, None]).max().item()
    print(f"[quant] worst rounding error = {worst:.4f} steps")
    assert worst <= 0.5 + 1e-5
    assert q.abs().max().item() == 127  # each row's largest magnitude uses the full range


def test_int8_linear_output_close_to_linear():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    x = torch.randn(4, 10, 256)
    quant = Int8Linear.from_linear(linear)
    with torch.no_grad():
        diff, scale = report("Int8Linear vs Linear", quant(x), linear(x))
    assert diff / scale < 2e-2
    assert diff > 0  # it really is quantised


def test_swap_keeps_state_and_dtypes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 50, bias=False))
    x = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(x)
    embedding = model[0].weight.clone()
    bias = model[1].bias.clone()
    full_bytes = weight_bytes(model)

    quantize_int8(model)

    assert isinstance(model[1], Int8Linear) and isinstance(model[4], Int8Linear)
    assert model[4].bias is None
    assert torch.equal(model[0].weight, embedding)  # only Linears are touched
    assert torch.equal(model[1].bias, bias)
    keys = set(model.state_dict())
    assert {"1.weight", "1.scales", "1.bias", "4.weight", "4.scales", "0.weight", "3.weight"} <= keys
    assert model.state_dict()["1.weight"].dtype == torch.int8

    # Casting the model casts scales and bias, never the int8 weight.
    model.to(torch.bfloat16)
    assert model[1].weight.dtype == torch.int8
    assert model[1].scales.dtype == torch.bfloat16 and model[1].bias.dtype == torch.bfloat16
    model.float()
    with torch.no_grad():
        after = model(x)
    diff, scale = report("quantised MLP vs fp32", after, before)
    assert diff / scale < 5e-2
    print(f"[quant] weight bytes {full_bytes} -> {weight_bytes(model)}")
    assert weight_bytes(model) < full_bytes


def test_include_filter_limits_the_swap():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    quantize_int8(model, include=lambda name, module: name == "1")
    assert type(model[0]) is nn.Linear and isinstance(model[1], Int8Linear)
