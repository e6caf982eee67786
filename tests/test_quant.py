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


def _tiny_autoregressive():
    from tutortoietts.engine.configs import TINY
    from tutortoietts.engine.gpt import AutoregressiveModel

    torch.manual_seed(0)
    model = AutoregressiveModel(**TINY["autoregressive"]).eval()
    # Default init leaves LayerNorms at identity and the head near zero; give every weight some
    # spread so the logits are not flat and code agreement means something.
    with torch.no_grad():
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                spread = 0.02 if parameter.dim() > 1 else 0.1
                centre = 1.0 if isinstance(module, nn.LayerNorm) and name == "weight" else 0.0
                parameter.copy_(torch.randn_like(parameter) * spread + centre)
        model.mel_head.weight.mul_(50)  # logits of a few units, like a trained model's
    return model


def test_autoregressive_model_under_int8():
    import copy

    from tutortoietts.engine.quant import quantize_autoregressive

    model = _tiny_autoregressive()
    quant = quantize_autoregressive(copy.deepcopy(model))
    swapped = [name for name, module in quant.named_modules() if isinstance(module, Int8Linear)]
    assert "mel_head" in swapped and "gpt.h.0.attn.c_attn" in swapped and "gpt.h.1.mlp.c_proj" in swapped
    assert not any(name.startswith("conditioning_encoder") for name in swapped)
    assert type(quant.text_head) is nn.Linear  # never used while decoding

    generator = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 64, generator=generator)
    text = torch.randint(0, 255, (1, 12), generator=generator)
    codes = torch.randint(0, 8192, (2, 20), generator=generator)
    with torch.no_grad():
        logits_fp32 = model.mel_head(model.latents(cond, text, codes))
        logits_int8 = quant.mel_head(quant.latents(cond, text, codes))
    diff, scale = report("int8 AR logits vs fp32", logits_int8, logits_fp32)
    assert diff / scale < 5e-2

    sampling = dict(num_samples=4, max_mel_tokens=24, temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    fp32_codes = model.sample(cond, text, generator=torch.Generator().manual_seed(7), **sampling)
    int8_codes = quant.sample(cond, text, generator=torch.Generator().manual_seed(7), **sampling)
    agreement = (fp32_codes == int8_codes).float().mean().item()
    first_token = (fp32_codes[:, 0] == int8_codes[:, 0]).float().mean().item()
    print(f"[quant] int8 vs fp32 sampled code agreement {agreement:.3f} (first code {first_token:.2f})")
    assert int8_codes.shape == fp32_codes.shape
    assert first_token == 1.0  # the same distribution up to quantisation noise picks the same first code
