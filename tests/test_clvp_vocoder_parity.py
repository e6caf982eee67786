"""CLVP, UnivNet and the random-latent generators against the reference modules, identical random weights."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from tortoise.models.clvp import CLVP as ReferenceCLVP
from tortoise.models.random_latent_generator import RandomLatentConverter
from tortoise.models.vocoder import UnivNetGenerator

from tests.conftest import report
from tutortoietts.engine.clvp import CLVP
from tutortoietts.engine.configs import FULL, TINY
from tutortoietts.engine.rlg import RandomLatentGenerator
from tutortoietts.engine.vocoder import UnivNet

# The reference builds its vocoder with torch.nn.utils.weight_norm, which torch now warns about.
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


def perturbed(state: dict[str, torch.Tensor], seed: int, spread: float = 0.3) -> dict[str, torch.Tensor]:
    """Every float tensor jittered (norm gains, biases, temperature too), so no default value hides a bug."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in state.items():
        if not value.dtype.is_floating_point or name.endswith("inv_freq"):
            out[name] = value.clone()
        elif value.dim() <= 1 or name.endswith("weight_g"):
            out[name] = value * (1 + spread * torch.randn(value.shape, generator=generator)) + 0.05 * torch.randn(value.shape, generator=generator)
        else:
            out[name] = value + spread * value.std() * torch.randn(value.shape, generator=generator)
    return out


def shapes(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(value.shape)) for name, value in state.items()]


def through_file(state: dict) -> dict:
    """What loading an official file gives: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- CLVP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clvp_pair():
    torch.manual_seed(0)
    reference = ReferenceCLVP(**TINY["clvp2"]).eval()
    state = perturbed(reference.state_dict(), seed=1)
    reference.load_state_dict(state)
    ours = CLVP(**TINY["clvp2"]).eval()
    ours.load_state_dict(through_file(state), strict=True)
    return reference, ours


def candidate_codes(count: int, length: int, seed: int) -> torch.Tensor:
    """Codes as the reranker sees them: after fix_autoregressive_output, runs of calm token 83 and the 45, 45, 248 tail."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 8192, (count, length), generator=generator)
    for row in range(count):
        stop = int(torch.randint(length // 2, length, (1,), generator=generator))
        codes[row, stop:] = 83
        if length >= 3:
            codes[row, -3:] = torch.tensor([45, 45, 248])
    codes[0, 0], codes[-1, 0] = 0, 8191  # both ends of the vocabulary
    return codes


@pytest.mark.parametrize("text_length, code_length", [(1, 1), (12, 17), (40, 101), (90, 250)])
def test_clvp_scores_match_reference(clvp_pair, text_length, code_length):
    reference, ours = clvp_pair
    text = torch.randint(1, 256, (1, text_length), generator=torch.Generator().manual_seed(text_length))
    codes = candidate_codes(6, code_length, seed=code_length)
    with torch.no_grad():
        theirs = reference(F.pad(text, (0, 1)).repeat(6, 1), codes, return_loss=False)
    scores = ours.score(text, codes)
    diff, scale = report(f"clvp scores text={text_length} codes={code_length}", scores, theirs)
    assert scores.shape == (6,) and scores.dtype == torch.float32
    assert diff <= 1e-4 * scale
    # A candidate's score does not depend on the rest of the batch.
    alone = ours.score(text, codes[2:3])
    assert torch.allclose(alone, scores[2:3], atol=1e-5)


def test_clvp_bf16_stays_close(clvp_pair):
    reference, ours = clvp_pair
    text = torch.randint(1, 256, (1, 30), generator=torch.Generator().manual_seed(5))
    codes = candidate_codes(4, 80, seed=5)
    with torch.no_grad():
        theirs = reference(F.pad(text, (0, 1)).repeat(4, 1), codes, return_loss=False)
    low = CLVP(**TINY["clvp2"]).eval()
    low.load_state_dict(ours.state_dict())
    scores = low.to(torch.bfloat16).score(text, codes)
    diff, scale = report("clvp scores bf16 vs reference fp32", scores, theirs)
    assert scores.dtype == torch.float32
    assert diff <= 1e-2 * scale  # bf16 keeps ~3 significant digits; norms and pooling run in fp32


def test_clvp_state_dict_round_trips(clvp_pair):
    _, ours = clvp_pair
    reference_keys = shapes(ReferenceCLVP(**TINY["clvp2"]).state_dict())
    assert shapes(ours.state_dict()) == reference_keys
    fresh = CLVP(**TINY["clvp2"])
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for (name, a), b in zip(fresh.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name


# --- UnivNet --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocoder_state():
    torch.manual_seed(2)
    reference = UnivNetGenerator(**TINY["vocoder"])
    return perturbed(reference.state_dict(), seed=3, spread=0.2)


def reference_vocoder(state: dict, remove_weight_norm: bool) -> UnivNetGenerator:
    reference = UnivNetGenerator(**TINY["vocoder"])
    reference.load_state_dict(state)
    reference.eval(inference=remove_weight_norm)
    return reference


def test_vocoder_matches_reference_from_checkpoint(vocoder_state):
    """vocoder.pth['model_g'] (weight-norm keys) -> strict load -> same waveform as the reference's inference()."""
    checkpoint = through_file({"model_g": vocoder_state})
    ours = UnivNet(**TINY["vocoder"])
    ours.load_state_dict(checkpoint["model_g"], strict=True)
    ours.eval()
    folded = reference_vocoder(vocoder_state, remove_weight_norm=True)  # api.py's eval(inference=True)
    kept = reference_vocoder(vocoder_state, remove_weight_norm=False)
    generator = torch.Generator().manual_seed(4)
    for frames in (1, 6, 19):
        mel = torch.randn(2, 100, frames, generator=generator) * 2.0 - 5.0
        noise = torch.randn(2, 16, frames + 10, generator=generator)
        wave = ours.vocode(mel, noise)
        with torch.no_grad():
            theirs = folded.inference(mel, noise)
            theirs_kept = kept.inference(mel, noise)
        assert wave.shape == theirs.shape == (2, 1, frames * 256)
        diff, scale = report(f"univnet waveform f={frames}", wave, theirs)
        assert diff <= 1e-4 * scale
        assert 0.02 < scale < 0.999  # a real waveform, not silence or a saturated tanh
        diff, scale = report(f"univnet waveform f={frames} (reference keeping weight norm)", wave, theirs_kept)
        assert diff <= 1e-4 * scale


def test_vocoder_state_dict_keeps_checkpoint_layout(vocoder_state):
    ours = UnivNet(**TINY["vocoder"])
    assert shapes(ours.state_dict()) == shapes(UnivNetGenerator(**TINY["vocoder"]).state_dict())
    ours.load_state_dict(vocoder_state)
    ours.eval().vocode(torch.zeros(1, 100, 2) - 5.0)  # folds the weights
    after = ours.state_dict()
    assert shapes(after) == shapes(vocoder_state)
    for name, value in vocoder_state.items():
        assert torch.equal(after[name], value), name


def test_vocoder_reload_after_folding_uses_new_weights(vocoder_state):
    ours = UnivNet(**TINY["vocoder"]).eval()
    mel = torch.randn(1, 100, 4, generator=torch.Generator().manual_seed(6)) - 5.0
    noise = torch.randn(1, 16, 14, generator=torch.Generator().manual_seed(7))
    ours.vocode(mel, noise)  # folds the random initial weights
    ours.load_state_dict(vocoder_state)
    wave = ours.vocode(mel, noise)
    with torch.no_grad():
        theirs = reference_vocoder(vocoder_state, remove_weight_norm=True).inference(mel, noise)
    diff, scale = report("univnet after reload", wave, theirs)
    assert diff <= 1e-4 * scale


def test_vocoder_noise_argument(vocoder_state):
    ours = UnivNet(**TINY["vocoder"]).eval()
    ours.load_state_dict(vocoder_state)
    mel = torch.randn(1, 100, 3) - 5.0
    first = ours.vocode(mel, generator=torch.Generator().manual_seed(8))
    again = ours.vocode(mel, generator=torch.Generator().manual_seed(8))
    assert first.shape == (1, 1, 768) and torch.equal(first, again)
    with pytest.raises(ValueError, match="noise must be"):
        ours.vocode(mel, torch.randn(1, 16, 3))


# --- random-latent generators -------------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 128])
def test_rlg_matches_reference_with_same_draws(channels):
    torch.manual_seed(9)
    reference = RandomLatentConverter(channels).eval()
    state = perturbed(reference.state_dict(), seed=10)
    reference.load_state_dict(state)
    ours = RandomLatentGenerator(channels).eval()
    ours.load_state_dict(through_file(state), strict=True)
    assert shapes(ours.state_dict()) == shapes(reference.state_dict())
    for n in (1, 3):
        torch.manual_seed(11)
        with torch.no_grad():
            theirs = reference(torch.zeros(n))  # api.py passes torch.tensor([0.0]): only its length counts
        torch.manual_seed(11)
        latents = ours(n)
        diff, scale = report(f"rlg channels={channels} n={n}", latents, theirs)
        assert latents.shape == (n, channels)
        assert diff <= 1e-4 * scale
    seeded = ours(2, generator=torch.Generator().manual_seed(12))
    assert torch.equal(seeded, ours(2, generator=torch.Generator().manual_seed(12)))


# --- official sizes ------------------------------------------------------------------------------


@pytest.mark.full
def test_full_size_state_dicts_match_reference():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        pairs = [
            ("clvp2", CLVP(**FULL["clvp2"]), ReferenceCLVP(**FULL["clvp2"])),
            ("vocoder", UnivNet(**FULL["vocoder"]), UnivNetGenerator(**FULL["vocoder"])),
            ("rlg_auto", RandomLatentGenerator(**FULL["rlg_auto"]), RandomLatentConverter(**FULL["rlg_auto"])),
            ("rlg_diffuser", RandomLatentGenerator(**FULL["rlg_diffuser"]), RandomLatentConverter(**FULL["rlg_diffuser"])),
        ]
        for stem, ours, theirs in pairs:
            ours_shapes, their_shapes = shapes(ours.state_dict()), shapes(theirs.state_dict())
            print(f"[keys] {stem}: {len(ours_shapes)} entries, {sum(torch.Size(s).numel() for _, s in ours_shapes):,} numbers")
            assert ours_shapes == their_shapes, stem
