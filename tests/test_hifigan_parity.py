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
