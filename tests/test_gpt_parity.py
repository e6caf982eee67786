"""Parity of the autoregressive model (gpt.py, decoding.py) with the reference's UnifiedVoice, tiny config."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import report
from tutortoietts.engine.configs import FULL, TINY
from tutortoietts.engine.gpt import (
    CALM_TOKEN,
    AutoregressiveModel,
    fix_codes,
    trim_latents_at_silence,
)
from tutortoietts.errors import UserError

STOP = 8193
DIM = TINY["autoregressive"]["model_dim"]


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter seeded random values: the default init leaves zeros (proj_out, biases) that hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            values = torch.randn(p.shape, generator=generator) * 0.2
            is_norm_gain = p.dim() == 1 and name.endswith("weight") and ("norm" in name or ".ln_" in name)
            p.copy_(values + 1.0 if is_norm_gain else values)


def build_pair(stop_bias: float = 0.0):
    """A reference UnifiedVoice with random weights and our model loaded from its state dict (strict)."""
    from tortoise.models.autoregressive import UnifiedVoice

    reference = UnifiedVoice(**TINY["autoregressive"]).eval()
    randomize(reference, seed=1)
    with torch.no_grad():
        reference.mel_head.bias[STOP] += stop_bias  # makes the stop token likely, to exercise stop handling
    ours = AutoregressiveModel(**TINY["autoregressive"]).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.post_init_gpt2_config(kv_cache=True)
    return reference, ours


@pytest.fixture(scope="module")
def pair():
    return build_pair()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(2)
    cond = torch.randn(1, DIM, generator=generator)
    text = torch.randint(1, 255, (1, 9), generator=generator)  # unpadded tokenizer ids
    return cond, text


def reference_codes(reference, cond, text, *, seed, num, max_mel_tokens, temperature, top_p, repetition_penalty, batch=None):
    """What the reference's tts() does: padded text, inference_speech per batch, pad with the stop token."""
    torch.manual_seed(seed)
    batch = batch or num
    rows, lengths = [], []
    with torch.no_grad():
        for _ in range(num // batch):
            codes = reference.inference_speech(
                cond, F.pad(text, (0, 1)), do_sample=True, top_p=top_p, temperature=temperature,
                num_return_sequences=batch, length_penalty=1.0, repetition_penalty=repetition_penalty,
                max_generate_length=max_mel_tokens,
            )
            lengths.append(codes.shape[1])
            rows.append(F.pad(codes, (0, max_mel_tokens - codes.shape[1]), value=STOP))
    return torch.cat(rows), lengths


def our_codes(ours, cond, text, *, seed, num, max_mel_tokens, temperature, top_p, repetition_penalty, batch=None):
    return ours.sample(
        cond, text, num_samples=num, max_mel_tokens=max_mel_tokens, temperature=temperature, top_p=top_p,
        repetition_penalty=repetition_penalty, length_penalty=1.0, batch_size=batch,
        generator=torch.Generator().manual_seed(seed),
    )


# -- weights --------------------------------------------------------------------------------------


def assert_same_keys_and_shapes(ours, theirs):
    ours, theirs = ours.state_dict(), theirs.state_dict()
    assert list(ours) == list(theirs), f"key differences: {sorted(set(ours) ^ set(theirs))}"
    wrong = [k for k in theirs if ours[k].shape != theirs[k].shape]
    assert not wrong, f"shape differences: {[(k, ours[k].shape, theirs[k].shape) for k in wrong]}"
    print(f"[parity] state dict: {len(ours)} keys, names and shapes equal")


def test_state_dict_keys_and_shapes_tiny():
    from tortoise.models.autoregressive import UnifiedVoice

    assert_same_keys_and_shapes(AutoregressiveModel(**TINY["autoregressive"]), UnifiedVoice(**TINY["autoregressive"]))


@pytest.mark.full
def test_state_dict_keys_and_shapes_full():
    from tortoise.models.autoregressive import UnifiedVoice

    with torch.device("meta"):
        assert_same_keys_and_shapes(AutoregressiveModel(**FULL["autoregressive"]), UnifiedVoice(**FULL["autoregressive"]))


def test_state_dict_round_trip_and_legacy_mask_buffers(pair):
    reference, ours = pair
    state = ours.state_dict()
    theirs = reference.state_dict()  # after post_init_gpt2_config it also holds inference_model.* aliases
    for key, value in state.items():
        assert torch.equal(value, theirs[key]), key  # saved back in the Conv1D (in, out) layout, same values
    # Checkpoints from older transformers carry the causal-mask buffers; they must still load strictly.
    legacy = dict(state)
    legacy["gpt.h.0.attn.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    legacy["gpt.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    AutoregressiveModel(**TINY["autoregressive"]).load_state_dict(legacy, strict=True)


# -- forward passes ----------------------------------------------------------------------------


def test_conditioning_latent(pair):
    reference, ours = pair
    mels = torch.randn(2, 3, 80, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = reference.get_conditioning(mels)
    mine = ours.conditioning_latent(mels)
    assert mine.shape == (2, DIM)
    diff, scale = report("conditioning_latent", mine, theirs)
    assert diff <= 1e-4 * scale


def test_latents(pair, inputs):
    reference, ours = pair
    cond, text = inputs
    codes = torch.randint(0, 8192, (3, 17), generator=torch.Generator().manual_seed(4))
    codes[1, 12:] = CALM_TOKEN
    padded = F.pad(text, (0, 1))
    k, length = codes.shape
    with torch.no_grad():
        theirs = reference(
            cond.repeat(k, 1), padded.repeat(k, 1), torch.tensor([padded.shape[-1]]), codes.clone(),
            torch.tensor([length * reference.mel_length_compression]), return_latent=True, clip_inputs=False,
        )
    mine = ours.latents(cond, text, codes)
    assert mine.shape == (k, length, DIM) == theirs.shape
    diff, scale = report("latents", mine, theirs)
    assert diff <= 1e-4 * scale


def test_prefill_and_decode_logits(pair, inputs):
    reference, ours = pair
    cond, text = inputs
    with torch.no_grad():
        prompt = reference.compute_embeddings(cond, F.pad(text, (0, 1)))  # stores the prefix embedding
        first = reference.inference_model(prompt, attention_mask=torch.ones_like(prompt), use_cache=True, return_dict=True)
        token = torch.tensor([[123]])
        ids = torch.cat([prompt, token], dim=1)
        step_inputs = reference.inference_model.prepare_inputs_for_generation(
            ids, past_key_values=first.past_key_values, attention_mask=torch.ones_like(ids), use_cache=True
        )
        second = reference.inference_model(**step_inputs, return_dict=True)

        prefix = ours.embed_prefix(cond, text)
        assert prefix.shape[1] + 1 == prompt.shape[1]
        ours.setup_caches(1, prompt.shape[1] + 1)
        mine_first = ours.prefill(prefix)
        mine_second = ours.decode_one_token(token, input_pos=prompt.shape[1], mel_position=2)
    diff, scale = report("prefill logits", mine_first, first.logits[:, -1])
    assert diff <= 1e-4 * scale
    diff, scale = report("decode-step logits", mine_second, second.logits[:, -1])
    assert diff <= 1e-4 * scale


# -- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperature, top_p, repetition_penalty, num, max_mel_tokens",
    [(0.8, 0.8, 2.0, 3, 30), (1.0, 1.0, 1.0, 2, 20), (0.5, 0.5, 1.3, 4, 24)],
)
def test_sample_equals_reference(pair, inputs, temperature, top_p, repetition_penalty, num, max_mel_tokens):
    reference, ours = pair
    cond, text = inputs
    settings = dict(seed=5, num=num, max_mel_tokens=max_mel_tokens, temperature=temperature, top_p=top_p,
                    repetition_penalty=repetition_penalty)
    theirs, _ = reference_codes(reference, cond, text, **settings)
    mine = our_codes(ours, cond, text, **settings)
    assert mine.shape == (num, max_mel_tokens) and mine.dtype == torch.long
    mismatches = (mine != theirs).sum().item()
    print(f"[parity] sample t={temperature} p={top_p} rep={repetition_penalty}: {mismatches} of {mine.numel()} codes differ")
    assert torch.equal(mine, theirs)


def test_sample_in_batches_equals_reference_loop(pair, inputs):
    reference, ours = pair
    cond, text = inputs
    settings = dict(seed=7, num=4, max_mel_tokens=16, temperature=0.8, top_p=0.8, repetition_penalty=2.0, batch=2)
    theirs, _ = reference_codes(reference, cond, text, **settings)
    mine = our_codes(ours, cond, text, **settings)
    print(f"[parity] sample in 2 batches: {(mine != theirs).sum().item()} of {mine.numel()} codes differ")
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize("stop_bias, all_stop_early", [(6.0, False), (7.0, True), (12.0, True)])
def test_sample_stop_handling_equals_reference(inputs, stop_bias, all_stop_early):
    reference, ours = build_pair(stop_bias=stop_bias)
    cond, text = inputs
    settings = dict(seed=11, num=4, max_mel_tokens=30, temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    theirs, lengths = reference_codes(reference, cond, text, **settings)
    mine = our_codes(ours, cond, text, **settings)
    is_stop = mine == STOP
    stopped = is_stop.any(dim=1)
    first_stop = torch.where(stopped, is_stop.int().argmax(dim=1), -1)
    print(f"[parity] stop bias {stop_bias}: first stop per row {first_stop.tolist()}, reference generated {lengths[0]} steps")
    assert stopped.any(), "the biased weights should make some row stop"
    for row in range(mine.shape[0]):  # after a row's stop token, only stop tokens (padding)
        if stopped[row]:
            assert (mine[row, first_stop[row]:] == STOP).all()
    if all_stop_early:
        assert stopped.all() and lengths[0] < settings["max_mel_tokens"], "this case should end before max length"
    assert torch.equal(mine, theirs)


def test_length_penalty_changes_nothing(pair, inputs):
    _, ours = pair
    cond, text = inputs
    common = dict(num_samples=2, max_mel_tokens=8, temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    a = ours.sample(cond, text, length_penalty=1.0, generator=torch.Generator().manual_seed(3), **common)
    b = ours.sample(cond, text, length_penalty=5.0, generator=torch.Generator().manual_seed(3), **common)
    assert torch.equal(a, b)


def test_user_errors(pair, inputs):
    _, ours = pair
    cond, text = inputs
    common = dict(num_samples=1, temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    with pytest.raises(UserError, match="too long"):
        ours.sample(cond, torch.ones(1, 450, dtype=torch.long), max_mel_tokens=10, **common)
    with pytest.raises(UserError, match="max_mel_tokens"):
        ours.sample(cond, text, max_mel_tokens=10_000, **common)
    with pytest.raises(UserError, match="temperature"):
        ours.sample(cond, text, max_mel_tokens=10, **{**common, "temperature": 0.0})


# -- post-processing ---------------------------------------------------------------------------


def reference_fix_autoregressive_output():
    """The reference's own fix_autoregressive_output, taken from api.py's source.

    Importing tortoise.api loads the whole reference pipeline (librosa, every model: seconds);
    the function needs nothing but torch.
    """
    import ast
    import importlib.util

    path = importlib.util.find_spec("tortoise").submodule_search_locations[0] + "/api.py"
    tree = ast.parse(open(path).read())
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fix_autoregressive_output"]
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)
    return namespace["fix_autoregressive_output"]


def test_fix_codes_equals_reference():
    fix_autoregressive_output = reference_fix_autoregressive_output()
    rows = torch.tensor([
        [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],  # no stop token: unchanged
        [5, 6, 7, STOP, STOP, STOP, STOP, STOP, STOP, STOP],  # stop, then stop padding
        [5, 6, 7, 8, 9, 10, 11, 12, STOP, STOP],  # stop near the end
        [STOP, 6, STOP, 8, 9, 10, 11, 12, 13, 14],  # stop first, stray stop later
        [5, 6, 7, 8, 9, 10, 11, 12, 13, STOP],  # stop on the last code
    ])
    theirs = torch.stack([fix_autoregressive_output(row.clone(), STOP, complain=False) for row in rows])
    mine = fix_codes(rows.clone(), STOP)
    print(f"[parity] fix_codes: {(mine != theirs).sum().item()} of {mine.numel()} codes differ")
    assert torch.equal(mine, theirs)
    assert torch.equal(fix_codes(rows), theirs)  # the stop token defaults to the official one


def test_trim_latents_at_silence():
    latents = torch.arange(20.0)[:, None].repeat(1, 3)
    codes = torch.full((20,), 7)
    assert trim_latents_at_silence(codes, latents).shape[0] == 20  # no silence: untouched
    codes[5:13] = CALM_TOKEN  # a run of exactly 8 calm codes is speech, not the end
    assert trim_latents_at_silence(codes, latents).shape[0] == 20
    codes[13] = CALM_TOKEN  # the 9th calm code in a row: cut just before it (api.py tts())
    trimmed = trim_latents_at_silence(codes, latents)
    assert trimmed.shape[0] == 13 and torch.equal(trimmed, latents[:13])


# -- reduced precision -------------------------------------------------------------------------


def test_bfloat16_runs_and_stays_close(pair, inputs):
    reference, ours = pair
    cond, text = inputs
    half = copy.deepcopy(ours).to(torch.bfloat16)
    mels = torch.randn(1, 2, 80, 40, generator=torch.Generator().manual_seed(8))
    codes = torch.randint(0, 8192, (2, 13), generator=torch.Generator().manual_seed(9))
    padded = F.pad(text, (0, 1))
    with torch.no_grad():
        cond_ref = reference.get_conditioning(mels)
        latents_ref = reference(
            cond.repeat(2, 1), padded.repeat(2, 1), torch.tensor([padded.shape[-1]]), codes.clone(),
            torch.tensor([13 * 1024]), return_latent=True, clip_inputs=False,
        )
    cond_half = half.conditioning_latent(mels)
    latents_half = half.latents(cond, text, codes)
    assert cond_half.dtype == latents_half.dtype == torch.bfloat16
    diff, scale = report("conditioning_latent bf16 vs fp32 reference", cond_half, cond_ref)
    assert diff <= 0.05 * scale
    diff, scale = report("latents bf16 vs fp32 reference", latents_half, latents_ref)
    assert diff <= 0.05 * scale
    sampled = half.sample(cond, text, num_samples=3, max_mel_tokens=12, temperature=0.8, top_p=0.8,
                          repetition_penalty=2.0, generator=torch.Generator().manual_seed(1))
    assert sampled.shape == (3, 12) and sampled.min() >= 0 and sampled.max() <= STOP
    assert half.gpt.h[0].attn.kv_cache.k.dtype == torch.bfloat16  # the cache follows the module dtype
