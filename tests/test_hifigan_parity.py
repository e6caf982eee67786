"""The HiFi decoder against the reference's HifiganGenerator (api_fast.py's), identical random weights; its checkpoint file."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
import torch.nn.functional as F

from tortoise.models.hifigan_decoder import HifiganGenerator as ReferenceHifigan

from tests.conftest import report
from tutortoietts.engine import checkpoints, configs
from tutortoietts.engine.configs import FULL, TINY
from tutortoietts.engine.hifigan import (
    FRAME_HOP, HifiganGenerator, frame_count, latent_span, upsample_latents,
)
from tutortoietts.errors import UserError

# The reference builds its layers with torch.nn.utils.weight_norm, which torch now warns about.
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


def perturbed(state: dict[str, torch.Tensor], seed: int, spread: float = 0.3) -> dict[str, torch.Tensor]:
    """Every float tensor jittered (gains and biases too), so no default value hides a bug."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in state.items():
        if value.dim() <= 1 or name.endswith("weight_g"):
            out[name] = value * (1 + spread * torch.randn(value.shape, generator=generator)) + 0.05 * torch.randn(value.shape, generator=generator)
        else:
            out[name] = value + spread * value.std() * torch.randn(value.shape, generator=generator)
    return out


def through_file(state: dict) -> dict:
    """What loading an official file gives: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def shapes(state: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(value.shape)) for name, value in state.items()]


def reference_inference(net: ReferenceHifigan, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The reference's inference(latents, cond) on the CPU.

    Its body moves the input to "cuda" unconditionally, so it cannot run here; these are its
    steps as written: two linear interpolations of the transposed latents, then its forward.
    """
    with torch.no_grad():
        up = F.interpolate(latents.transpose(1, 2), scale_factor=[1024 / 256], mode="linear")
        up = F.interpolate(up, scale_factor=[24000 / 22050], mode="linear")
        return net(up, cond.unsqueeze(0).transpose(1, 2))


def pair(config: dict, seed: int, gain: float = 1.5) -> tuple[ReferenceHifigan, HifiganGenerator]:
    torch.manual_seed(seed)
    reference = ReferenceHifigan(**config).eval()
    # Larger gains than torch's initialisation: a random generator's output should be loud
    # enough to compare (tens of percent of full scale), not a whisper.
    state = perturbed(reference.state_dict(), seed + 1)
    state = {k: v * gain if k.endswith("weight_g") else v for k, v in state.items()}
    reference.load_state_dict(state)
    ours = HifiganGenerator(**config).eval()
    ours.load_state_dict(through_file(state), strict=True)
    return reference, ours


@pytest.fixture(scope="module")
def tiny_pair():
    return pair(TINY["hifidecoder"], seed=0)


def inputs(batch: int, length: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, width, generator=generator), torch.randn(1, width, generator=generator)


# --- the network ---------------------------------------------------------------------------------


def test_state_dict_equals_reference(tiny_pair):
    reference, ours = tiny_pair
    assert shapes(ours.state_dict()) == shapes(reference.state_dict())
    with torch.device("meta"):
        full_ours, full_theirs = HifiganGenerator(**FULL["hifidecoder"]), ReferenceHifigan(**FULL["hifidecoder"])
    ours_shapes = shapes(full_ours.state_dict())
    print(f"[keys] hifidecoder full: {len(ours_shapes)} entries, {sum(torch.Size(s).numel() for _, s in ours_shapes):,} numbers")
    assert ours_shapes == shapes(full_theirs.state_dict())


@pytest.mark.parametrize("length", [1, 2, 3, 8, 37])
def test_inference_matches_reference_tiny(tiny_pair, length):
    """Lengths 1 and 2 take torch's copy path in the second stretch (the frame count does not change)."""
    reference, ours = tiny_pair
    latents, cond = inputs(1, length, 64, seed=length)
    wave = ours.inference(latents, cond)
    theirs = reference_inference(reference, latents, cond)
    assert wave.shape == theirs.shape == (1, 1, frame_count(length) * FRAME_HOP)
    assert wave.dtype == torch.float32
    diff, scale = report(f"hifi tiny T={length}", wave, theirs)
    assert diff <= 1e-4 * scale
    assert 0.05 < scale < 0.999  # a waveform, neither silence nor a saturated tanh


def test_batch_rows_are_independent(tiny_pair):
    _, ours = tiny_pair
    latents, cond = inputs(3, 9, 64, seed=4)
    together = ours.inference(latents, cond)
    alone = ours.inference(latents[1:2], cond)
    assert torch.allclose(together[1:2], alone, atol=1e-6)


@pytest.mark.full
def test_inference_matches_reference_full_size():
    reference, ours = pair(FULL["hifidecoder"], seed=5)
    latents, cond = inputs(1, 12, 1024, seed=6)
    wave = ours.inference(latents, cond)
    theirs = reference_inference(reference, latents, cond)
    assert wave.shape == theirs.shape == (1, 1, frame_count(12) * FRAME_HOP)
    diff, scale = report("hifi full size T=12", wave, theirs)
    assert diff <= 1e-4 * scale
    assert 0.05 < scale < 0.999


def test_bf16_stays_close(tiny_pair):
    reference, ours = tiny_pair
    latents, cond = inputs(1, 20, 64, seed=7)
    low = HifiganGenerator(**TINY["hifidecoder"]).eval()
    low.load_state_dict(ours.state_dict())
    wave = low.to(torch.bfloat16).inference(latents, cond)
    diff, scale = report("hifi tiny bf16 vs reference fp32", wave, reference_inference(reference, latents, cond))
    assert wave.dtype == torch.float32
    assert diff <= 0.1 * scale  # bf16 keeps ~3 digits per layer; reported, loosely bounded


def test_state_dict_keeps_checkpoint_layout_after_folding(tiny_pair):
    reference, ours = tiny_pair
    ours.inference(*inputs(1, 3, 64, seed=8))  # folds the weights
    after = ours.state_dict()
    assert shapes(after) == shapes(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize("keywords", [
    dict(resblock_type="2", resblock_dilation_sizes=[[1, 3], [1, 3], [1, 3]]),
    dict(conv_pre_weight_norm=False, conv_post_weight_norm=False, conv_post_bias=False, cond_channels=0),
])
def test_other_constructor_keywords_match_reference(keywords):
    config = {**TINY["hifidecoder"], **keywords}
    reference, ours = pair(config, seed=9)
    assert shapes(ours.state_dict()) == shapes(reference.state_dict())
    latents, cond = inputs(1, 6, 64, seed=10)
    if not config["cond_channels"]:
        with torch.no_grad():
            up = F.interpolate(latents.transpose(1, 2), scale_factor=[4.0], mode="linear")
            theirs = reference(F.interpolate(up, scale_factor=[24000 / 22050], mode="linear"))
        wave = ours.inference(latents)
    else:
        theirs, wave = reference_inference(reference, latents, cond), ours.inference(latents, cond)
    diff, scale = report(f"hifi tiny {sorted(keywords)}", wave, theirs)
    assert diff <= 1e-4 * scale


# --- windows: the interpolation and the generator by frame number ---------------------------------


@pytest.mark.parametrize("total", [1, 2, 3, 10, 147, 300])
def test_upsampled_windows_equal_interpolate(total):
    latents = torch.randn(1, total, 5, generator=torch.Generator().manual_seed(total))
    whole = F.interpolate(F.interpolate(latents.transpose(1, 2), scale_factor=[4.0], mode="linear"),
                          scale_factor=[24000 / 22050], mode="linear")  # (1, 5, frames)
    frames = frame_count(total)
    assert whole.shape[-1] == frames
    generator = torch.Generator().manual_seed(total + 1)
    windows = [(0, frames)] + [tuple(sorted(torch.randint(0, frames + 1, (2,), generator=generator).tolist())) for _ in range(6)]
    for first, stop in windows:
        if stop == first:
            continue
        lo, hi = latent_span(first, stop - first, total)
        # Any window of latents that covers the span gives the same frames.
        offset = max(0, lo - 2)
        part = upsample_latents(latents[:, offset : hi + 1], first, stop - first, offset=offset, total=total)
        diff = (part - whole[..., first:stop]).abs().max().item()
        assert diff <= 1e-6, (first, stop, diff)
    with pytest.raises(ValueError, match="need latents"):
        upsample_latents(latents[:, 1:], 0, frames, offset=1, total=total)


def test_windowed_decode_equals_whole_decode(tiny_pair):
    _, ours = tiny_pair
    latents, cond = inputs(1, 60, 64, seed=11)
    whole = ours.inference(latents, cond)[0, 0]
    frames = frame_count(60)
    rf = ours.receptive_field()
    for first, count in [(0, 10), (10, 40), (100, 30), (frames - 25, 25), (50, 1)]:
        lo, hi = latent_span(max(0, first - rf), min(frames, first + count + rf) - max(0, first - rf), 60)
        piece = ours.decode_frames(latents[:, lo:hi], cond, first, count, offset=lo, total=60)[0, 0]
        expected = whole[first * FRAME_HOP : (first + count) * FRAME_HOP]
        diff, scale = report(f"hifi window frames {first}+{count}", piece, expected)
        assert piece.shape == expected.shape
        assert diff <= 1e-5 * scale


def test_receptive_field_bounds_the_influence_of_a_frame(tiny_pair):
    """Change one input frame: no output sample beyond the receptive field may move."""
    _, ours = tiny_pair
    rf = ours.receptive_field()
    print(f"receptive field: {rf} frames each side (tiny)")
    with torch.device("meta"):
        assert HifiganGenerator(**FULL["hifidecoder"]).receptive_field() == rf  # same kernels, same reach
    x = torch.randn(1, 64, 80, generator=torch.Generator().manual_seed(12))
    cond = torch.randn(1, 64, 1)
    y = x.clone()
    y[..., 40] += 3.0
    with torch.no_grad():
        ours.fold_weight_norm()
        moved = (ours(x, cond) - ours(y, cond)).abs()[0, 0] > 0
    where = moved.nonzero().flatten()
    first, last = int(where.min()) // FRAME_HOP, int(where.max()) // FRAME_HOP
    print(f"one frame moved frames {first}..{last}")
    assert 40 - rf <= first and last <= 40 + rf
    assert last - first >= 2 * (rf - 4)  # and the bound is not loose by more than a few frames


# --- the checkpoint file -------------------------------------------------------------------------


def test_random_file_loads_strictly_in_both(tiny_models_dir):
    assert (tiny_models_dir / "hifidecoder.pth").is_file()
    state = torch.load(tiny_models_dir / "hifidecoder.pth", weights_only=True)
    reference = ReferenceHifigan(**checkpoints.read_config(tiny_models_dir)["hifidecoder"])
    reference.load_state_dict(state, strict=True)
    net = checkpoints.load_network("hifidecoder", tiny_models_dir)
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    latents, cond = inputs(1, 10, 64, seed=13)
    diff, scale = report("hifi from random file", net.inference(latents, cond), reference_inference(reference.eval(), latents, cond))
    assert diff <= 1e-4 * scale and 0.01 < scale < 0.999  # the random writer's weights make audible noise


def test_hifidecoder_is_optional_for_the_six(tiny_models_dir, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models_dir, folder)
    (folder / "hifidecoder.pth").unlink()
    assert checkpoints.find_models_dir(folder) == folder  # a diffusion set is complete without it
    with pytest.raises(UserError) as caught:
        checkpoints.require_optional(folder, "hifidecoder")
    message = str(caught.value)
    print(message)
    assert "hifidecoder.pth not found" in message and "models download" in message and "\n" not in message
    fingerprint = checkpoints.weights_fingerprint(folder)
    shutil.copy(tiny_models_dir / "hifidecoder.pth", folder / "hifidecoder.pth")
    assert checkpoints.weights_fingerprint(folder) == fingerprint  # the six files' keys stay
    assert checkpoints.require_optional(folder, "hifidecoder") == folder / "hifidecoder.pth"
    before = checkpoints.optional_fingerprint(folder, "hifidecoder")
    state = torch.load(folder / "hifidecoder.pth", weights_only=True)
    state["conv_pre.bias"] += 1
    torch.save(state, folder / "hifidecoder.pth")
    assert checkpoints.optional_fingerprint(folder, "hifidecoder") != before


def test_extra_or_missing_keys_are_one_line(tiny_models_dir, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models_dir, folder)
    path = folder / "hifidecoder.pth"
    state = torch.load(path, weights_only=True)
    state["speaker_encoder.fc.weight"] = torch.zeros(2, 2)  # what a decoder saved with its encoder would carry
    torch.save(state, path)
    with pytest.raises(UserError, match=r"hifidecoder\.pth: unexpected key speaker_encoder\.fc\.weight"):
        checkpoints.load_network("hifidecoder", folder)
    del state["speaker_encoder.fc.weight"], state["cond_layer.weight"]
    torch.save(state, path)
    with pytest.raises(UserError, match=r"hifidecoder\.pth: missing key cond_layer\.weight"):
        checkpoints.load_network("hifidecoder", folder)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read as a checkpoint"):
        checkpoints.require_optional(folder, "hifidecoder")


def test_config_names_the_optional_network():
    assert "hifidecoder" in configs.OPTIONAL_STEMS and "hifidecoder" not in configs.STEMS
    assert checkpoints.ALL_FILES == {**checkpoints.FILES, "hifidecoder": "hifidecoder.pth"}
    resolved = configs.resolve({"hifidecoder": {"upsample_initial_channel": 64}})
    assert resolved["hifidecoder"]["upsample_initial_channel"] == 64


# --- the latents api_fast feeds the decoder ---------------------------------------------------------


def stream_reference(reference, cond, text, *, kv_cache: bool, seed: int, forced: torch.Tensor | None = None, **sampling):
    """api_fast.tts_stream's autoregressive half: compute_embeddings, then get_generator's (code, latent)
    per step until it stops. `forced` makes it emit those codes (a logits processor), whatever it samples.
    -> codes (n,), latents (n, C): what tts_stream concatenates and hands hifi_decoder.inference."""
    from tortoise.models.stream_generator import init_stream_support
    from transformers import LogitsProcessor, LogitsProcessorList

    init_stream_support()  # what importing api_fast does
    reference.post_init_gpt2_config(kv_cache=kv_cache)
    fake_inputs = reference.compute_embeddings(cond, F.pad(text, (0, 1)))  # tts_stream pads the text first

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - fake_inputs.shape[1]
            keep = torch.full_like(scores, float("-inf"))
            keep[:, forced[step]] = 0.0
            return keep

    extra = {"logits_processor": LogitsProcessorList([Force()])} if forced is not None else {}
    codes, latents = [], []
    with torch.no_grad():
        for code, latent in reference.get_generator(
            fake_inputs=fake_inputs, top_k=50, do_sample=True, num_beams=1, num_return_sequences=1,
            length_penalty=1.0, output_attentions=False, output_hidden_states=True,
            seed=seed,  # its generate() seeds the global RNG itself (torch.manual_seed(seed), 0 by default)
            **sampling, **extra,
        ):
            codes.append(code)
            latents.append(latent)
    return torch.cat(codes), torch.cat(latents)


@pytest.fixture(scope="module")
def gpt_pair():
    from tests.test_gpt_parity import build_pair

    return build_pair(stop_bias=6.0)  # random weights that stop within a few dozen codes


def test_streamed_latents_match_reference_stream_generator(gpt_pair):
    """With its KV cache on (read_fast.py's and do_tts.py's default), the reference's stream generator
    yields, per step, the code and the latent it came from. Ours, same seed: the same codes, the
    same latents through sample(on_step=...), and the same again recomputed from the codes alone
    (latents(sampling_positions=True)), which is what the hifi path decodes."""
    from tests.test_gpt_parity import DIM, STOP

    reference, ours = gpt_pair
    generator = torch.Generator().manual_seed(20)
    cond = torch.randn(1, DIM, generator=generator)
    text = torch.randint(1, 255, (1, 11), generator=generator)
    sampling = dict(temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    theirs_codes, theirs_latents = stream_reference(reference, cond, text, kv_cache=True, seed=21, **sampling)
    n = theirs_codes.shape[0]
    assert theirs_codes[-1] == STOP and 3 < n < 200, n  # it stopped on its own

    steps = []
    codes = ours.sample(cond, text, num_samples=1, max_mel_tokens=300, length_penalty=1.0,
                        generator=torch.Generator().manual_seed(21), on_step=lambda s, c, l: steps.append((s, c, l)), **sampling)
    assert torch.equal(codes[0, :n], theirs_codes) and bool((codes[0, n:] == STOP).all())
    assert [s for s, _, _ in steps] == list(range(n))
    streamed = torch.cat([latent for _, _, latent in steps])  # (n, C)
    diff, scale = report("streamed latents vs reference stream generator", streamed, theirs_latents)
    assert diff <= 1e-4 * scale
    recomputed = ours.latents(cond, text, codes[:, :n], sampling_positions=True)[0]
    diff, scale = report("latents(sampling_positions) vs reference stream generator", recomputed, theirs_latents)
    assert diff <= 1e-4 * scale
    # The training layout (diffusion's latents) is a different tensor: the positions matter.
    assert (ours.latents(cond, text, codes[:, :n])[0] - theirs_latents).abs().max() > 1e-2 * scale


def test_reference_stream_without_kv_cache_feeds_training_layout(gpt_pair):
    """api_fast's TextToSpeech defaults to kv_cache=False; then (and in its non-streaming tts()) the
    decoder gets the training layout's latents, our latents() without sampling_positions. Forced
    to the same codes, since that path samples from other logits."""
    from tests.test_gpt_parity import DIM

    reference, ours = gpt_pair
    generator = torch.Generator().manual_seed(22)
    cond = torch.randn(1, DIM, generator=generator)
    text = torch.randint(1, 255, (1, 7), generator=generator)
    forced = torch.randint(0, 8192, (12,), generator=generator)
    forced[-1] = 8193
    sampling = dict(temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    theirs_codes, theirs_latents = stream_reference(reference, cond, text, kv_cache=False, seed=23, forced=forced, **sampling)
    assert torch.equal(theirs_codes, forced)
    mine = ours.latents(cond, text, forced[None])[0]
    diff, scale = report("latents (training layout) vs reference stream generator without KV cache", mine, theirs_latents)
    assert diff <= 1e-4 * scale
    # With its cache on, the same forced codes give the sampling layout.
    _, cached = stream_reference(reference, cond, text, kv_cache=True, seed=23, forced=forced, **sampling)
    diff, scale = report("latents (sampling layout) vs reference stream generator, forced codes", ours.latents(cond, text, forced[None], sampling_positions=True)[0], cached)
    assert diff <= 1e-4 * scale


# --- settings and cache keys ----------------------------------------------------------------------


def test_decoder_setting_and_presets():
    from tutortoietts.settings import load_preset

    realtime, fast_hifi, v2 = load_preset("realtime"), load_preset("fast_hifi"), load_preset("ultra_fast_v2")
    assert realtime.decoder == fast_hifi.decoder == "hifi" and v2.decoder == "diffusion"
    assert realtime.num_autoregressive_samples == 1 and 1 < fast_hifi.num_autoregressive_samples <= 8
    sampling = ("temperature", "top_p", "repetition_penalty", "length_penalty", "max_mel_tokens", "precision")
    assert all(getattr(realtime, name) == getattr(v2, name) == getattr(fast_hifi, name) for name in sampling)
    with pytest.raises(UserError, match="setting decoder = 'vocoder' is out of range: it must be one of diffusion, hifi"):
        load_preset("realtime", decoder="vocoder")


def test_cache_keys_share_the_autoregressive_tier():
    from tutortoietts.cache import ar_key, audio_key
    from tutortoietts.settings import load_preset

    v2 = load_preset("ultra_fast_v2")
    hifi = v2.replace(decoder="hifi")
    assert ar_key("Hello.", "voice", hifi, 1, "w") == ar_key("Hello.", "voice", v2, 1, "w")  # the codes are shared
    ar = ar_key("Hello.", "voice", v2, 1, "w")
    assert audio_key(ar, hifi, "h") != audio_key(ar, v2)
    assert audio_key(ar, hifi, "h") != audio_key(ar, hifi, "h2")  # another hifidecoder.pth, other audio
    # No diffusion setting changes hifi audio; a diffusion key is what it was before `decoder` existed.
    assert audio_key(ar, hifi.replace(diffusion_iterations=40, sampler="ddim"), "h") == audio_key(ar, hifi, "h")
    from tutortoietts.cache import digest

    assert audio_key(ar, v2) == digest({"stage": "audio", "ar": ar, "settings": v2.diffusion_fields()})
    # The realtime preset's codes are ultra_fast_v2's at one candidate.
    assert ar_key("Hi.", "v", load_preset("realtime"), 1, "w") == ar_key("Hi.", "v", v2.replace(num_autoregressive_samples=1), 1, "w")
