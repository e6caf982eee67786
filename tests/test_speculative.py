"""Speculative sampling: per-row cache verification, exactness (chi-square against plain sampling), draft == model."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import chi2_contingency

from tutortoietts.engine import speculative as spec
from tutortoietts.engine.configs import TINY
from tutortoietts.engine.gpt import AutoregressiveModel, RowPositions
from tutortoietts.errors import UserError

DIM = TINY["autoregressive"]["model_dim"]
CODES = 256  # the test networks' code vocabulary (the official one has 8192)
SIGNIFICANCE = 1e-3  # per position; fixed seeds make every run draw the same samples


def tiny_model(seed: int = 0, sharpness: float = 1.5, **changes) -> AutoregressiveModel:
    """A tiny network with 256 codes and random weights shaped so the test can see the sampling rules.

    A small code vocabulary keeps thousands of samples cheap. The head is scaled so a few dozen
    codes carry the mass (top-p and top-k then cut something, and the repetition penalty moves
    it), and the second block's residual branches are damped, so a one-block draft agrees with
    the full model about half the time: proposals are both kept and refused.
    """
    torch.manual_seed(seed)
    vocab = dict(number_mel_codes=CODES + 2, start_mel_token=CODES, stop_mel_token=CODES + 1)
    model = AutoregressiveModel(**{**TINY["autoregressive"], **vocab, **changes}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
        model.mel_head.weight.mul_(sharpness)
        model.mel_embedding.weight.mul_(0.1)
        model.mel_pos_embedding.emb.weight.mul_(0.1)
        for block in model.gpt.h[1:]:
            block.attn.c_proj.weight.mul_(0.2)
            block.mlp.c_proj.weight.mul_(0.2)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(5)
    return torch.randn(1, DIM, generator=generator), torch.randint(1, 255, (1, 7), generator=generator)


def plain(model, cond, text, seed, **kw):
    return model.sample(cond, text, generator=torch.Generator().manual_seed(seed), **kw)


def speculative(model, cond, text, seed, draft, k, stats=None, **kw):
    return spec.sample(model, cond, text, draft=draft, k=k, generator=torch.Generator().manual_seed(seed), stats=stats, **kw)


def chi_square_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample chi-square test of equal categorical distributions; rare codes pooled (expected counts >= 5)."""
    counts_a = torch.bincount(a, minlength=CODES + 2)
    counts_b = torch.bincount(b, minlength=CODES + 2)
    total = counts_a + counts_b
    common = total >= 10
    table = [
        [*counts_a[common].tolist(), int(counts_a[~common].sum())],
        [*counts_b[common].tolist(), int(counts_b[~common].sum())],
    ]
    if table[0][-1] + table[1][-1] == 0:
        table = [row[:-1] for row in table]
    return float(chi2_contingency(table)[1])


# -- the cache path -------------------------------------------------------------------------------


def test_rows_at_different_positions_match_one_token_at_a_time(model, inputs):
    """decode_rows over the static cache = decode_one_token run step by step, each row at its own place."""
    cond, text = inputs
    prefix = model.embed_prefix(cond, text)
    P, batch, length = prefix.shape[1], 3, 9
    codes = torch.randint(0, CODES, (batch, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.setup_caches(batch, P + 1 + length + 4)
        model.prefill(prefix)
        step_logits = torch.stack([
            model.decode_one_token(codes[:, j : j + 1], input_pos=P + 1 + j, mel_position=j + 2) for j in range(length)
        ], dim=1)  # (B, T, V)
        # Again from scratch: rows fed in blocks of different sizes and offsets, with stale junk
        # written past each row's block first (what a refused proposal leaves behind).
        model.prefill(prefix)
        starts = [0, 2, 5]
        first = torch.tensor(starts)
        junk = torch.randint(0, CODES, (batch, 4), generator=torch.Generator().manual_seed(2))
        positions = RowPositions.of(P + 1 + first[:, None] + torch.arange(4), P + 1 + max(starts) + 4)
        model.decode_rows(junk, positions, first[:, None] + torch.arange(4) + 2)
        for row, start in enumerate(starts):  # the prefix of each row, one token at a time
            for j in range(start):
                model.decode_one_token(codes[row : row + 1, j : j + 1], input_pos=P + 1 + j, mel_position=j + 2)
        block = torch.stack([codes[row, start : start + 4] for row, start in enumerate(starts)])
        positions = RowPositions.of(P + 1 + first[:, None] + torch.arange(4), P + 1 + max(starts) + 4)
        block_logits = model.decode_rows(block, positions, first[:, None] + torch.arange(4) + 2)  # (B, 4, V)
    for row, start in enumerate(starts):
        diff = (block_logits[row] - step_logits[row, start : start + 4]).abs().max().item()
        print(f"row {row} from code {start}: max|diff| {diff:.2e}")
        assert diff < 1e-4


def test_layers_argument_runs_only_those_blocks(model, inputs):
    cond, text = inputs
    prefix = model.embed_prefix(cond, text)
    with torch.no_grad():
        model.setup_caches(1, prefix.shape[1] + 4)
        full = model.prefill(prefix)
        ablated_model = copy.deepcopy(model)
        ablated_model.gpt.skipped = frozenset({1})
        ablated_model.setup_caches(1, prefix.shape[1] + 4)
        ablated = ablated_model.prefill(prefix)
        start = model.mel_embedding.weight[model.start_mel_token] + model.mel_pos_embedding.emb.weight[0]
        first_only = model.gpt(torch.cat([prefix, start[None, None]], 1), layers=range(1))
    assert not torch.allclose(full, ablated)
    assert torch.allclose(model.mel_logits(first_only[:, -1]), ablated, atol=1e-5)


# -- draft == the model: every proposal kept, plain sampling's codes ------------------------------


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("kind", ["self", "checkpoint"])
def test_draft_equal_to_model_keeps_everything_and_reproduces_plain_codes(model, inputs, kind, k):
    cond, text = inputs
    kw = dict(num_samples=6, max_mel_tokens=30, temperature=0.8, top_p=0.8, repetition_penalty=2.0, batch_size=3)
    draft = spec.SelfDraft(len(model.gpt.h)) if kind == "self" else spec.ModelDraft(copy.deepcopy(model), cond)
    stats = spec.SpeculationStats()
    codes = speculative(model, cond, text, 11, draft, k, stats, **kw)
    expected = plain(model, cond, text, 11, **kw)
    print(stats.to_dict())
    assert stats.proposed > 0 and stats.acceptance_rate == 1.0
    assert torch.equal(codes, expected)


# -- exactness: the distribution of the codes is the full model's ----------------------------------


CASES = {
    "reference knobs": dict(temperature=0.8, top_p=0.8, repetition_penalty=2.0),
    "hot, no top-p, no penalty": dict(temperature=1.3, top_p=1.0, repetition_penalty=1.0),
    "cold, tight top-p, strong penalty": dict(temperature=0.6, top_p=0.6, repetition_penalty=4.0),
}


@pytest.mark.parametrize("case", CASES)
def test_speculative_codes_have_the_full_models_distribution(model, inputs, case):
    """Codes 1..4 (those the first rounds' proposals, corrections and bonus codes decide) over 3000
    samples each way: plain sampling and self-speculation with a one-block draft agree, while the
    draft's own distribution is told apart, so the test sees a wrong accept/reject rule."""
    cond, text = inputs
    kw = dict(num_samples=3000, max_mel_tokens=5, batch_size=1000, **CASES[case])
    stats = spec.SpeculationStats()
    with_speculation = speculative(model, cond, text, 101, spec.SelfDraft(1), 3, stats, **kw)
    without = plain(model, cond, text, 202, **kw)
    draft_only = copy.deepcopy(model)
    draft_only.gpt.skipped = frozenset(range(1, len(model.gpt.h)))
    draft_codes = plain(draft_only, cond, text, 303, **kw)
    print(case, stats.to_dict())
    assert 0.2 < stats.acceptance_rate < 0.8  # proposals are both kept and refused: both branches run
    for position in range(1, 5):
        same = chi_square_p(with_speculation[:, position], without[:, position])
        differs = chi_square_p(draft_codes[:, position], without[:, position])
        print(f"code {position}: p(speculative = plain) {same:.3g}, p(draft = plain) {differs:.3g}")
        assert same > SIGNIFICANCE
        assert differs < 1e-6


def test_a_penalty_blind_to_the_proposals_is_caught(model, inputs, monkeypatch):
    """The test above can see the repetition penalty go wrong: a verification that forgets the
    codes proposed before each position samples a different distribution."""
    cond, text = inputs

    def verify_without_proposals(target, last, proposals, base, lowest, highest, seen, sampling):
        return original(target, last, proposals, base, lowest, highest, seen, sampling) if proposals.shape[1] == 0 else \
            original_blind(target, last, proposals, base, lowest, highest, seen, sampling)

    def original_blind(target, last, proposals, base, lowest, highest, seen, sampling):
        batch, vocab = seen.shape
        logits = target(torch.cat([last, proposals], dim=1), base, lowest, highest)
        blind = seen[:, None].expand(batch, logits.shape[1], vocab).reshape(-1, vocab)
        return spec.sampling_probs(logits.reshape(-1, vocab), blind, **sampling).view(batch, -1, vocab)

    original = spec.verify
    kw = dict(num_samples=3000, max_mel_tokens=5, batch_size=1000, **CASES["cold, tight top-p, strong penalty"])
    monkeypatch.setattr(spec, "verify", verify_without_proposals)
    wrong = speculative(model, cond, text, 101, spec.SelfDraft(1), 3, **kw)
    monkeypatch.undo()
    without = plain(model, cond, text, 202, **kw)
    p_values = [chi_square_p(wrong[:, position], without[:, position]) for position in range(1, 5)]
    print("blind penalty:", [f"{p:.3g}" for p in p_values])
    assert min(p_values) < 1e-6


def first_block_checkpoint(model: AutoregressiveModel) -> AutoregressiveModel:
    """A one-block checkpoint cut from the model: a separate draft network that agrees with it often."""
    kwargs = {**TINY["autoregressive"], "number_mel_codes": CODES + 2, "start_mel_token": CODES,
              "stop_mel_token": CODES + 1, "layers": 1}
    draft = AutoregressiveModel(**kwargs).eval()
    state = {name: value for name, value in model.state_dict().items() if not name.startswith("gpt.h.1.")}
    draft.load_state_dict(state, strict=True)
    return draft


@pytest.mark.parametrize("kind", ["cut from the model", "other width"])
def test_a_separate_checkpoint_draft_is_exact_too(model, inputs, kind):
    """A draft network with its own cache (and, at another width, its own conditioning latent)."""
    cond, text = inputs
    if kind == "cut from the model":
        draft = spec.ModelDraft(first_block_checkpoint(model), cond)
    else:
        other = tiny_model(seed=7, sharpness=1.5, layers=1, model_dim=32, heads=2)
        draft = spec.ModelDraft(other, torch.randn(1, 32, generator=torch.Generator().manual_seed(8)))
    kw = dict(num_samples=3000, max_mel_tokens=5, batch_size=1000, **CASES["reference knobs"])
    stats = spec.SpeculationStats()
    with_speculation = speculative(model, cond, text, 104, draft, 4, stats, **kw)
    without = plain(model, cond, text, 205, **kw)
    print(kind, stats.to_dict())
    if kind == "cut from the model":  # rows that keep all 4 make the draft catch up on its cache
        assert 0.2 < stats.acceptance_rate < 0.8
    for position in range(1, 5):
        p_value = chi_square_p(with_speculation[:, position], without[:, position])
        print(f"code {position}: p {p_value:.3g}")
        assert p_value > SIGNIFICANCE


def test_rows_stop_and_fill_with_the_stop_code(inputs):
    """A model that stops often: rows end at different rounds; stop codes pad them as plain sampling does."""
    cond, text = inputs
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.mel_head.bias[model.stop_mel_token] += 12.0
    kw = dict(num_samples=64, max_mel_tokens=40, temperature=1.0, top_p=1.0, repetition_penalty=1.0)
    codes = speculative(model, cond, text, 9, spec.SelfDraft(1), 4, **kw)
    stop = model.stop_mel_token
    stopped = codes == stop
    first = stopped.int().argmax(dim=1)
    assert stopped.any(dim=1).float().mean() > 0.5  # most rows stopped before the end
    for row, index in zip(stopped, first):  # once stopped, always stop
        if row.any():
            assert row[index:].all()
    lengths_plain = (plain(model, cond, text, 10, **kw) == stop).int().argmax(dim=1).float().mean()
    print(f"mean stop index: speculative {first.float().mean():.2f}, plain {lengths_plain:.2f}")


def test_bad_k_and_bad_draft_are_user_errors(model, inputs):
    cond, text = inputs
    kw = dict(num_samples=1, max_mel_tokens=4, temperature=0.8, top_p=0.8, repetition_penalty=2.0)
    with pytest.raises(UserError, match="at least 1"):
        speculative(model, cond, text, 0, spec.SelfDraft(1), 0, **kw)
    with pytest.raises(UserError, match="1 to 2 layers"):
        speculative(model, cond, text, 0, spec.SelfDraft(5), 2, **kw)
    other = tiny_model(number_mel_codes=100, start_mel_token=98, stop_mel_token=99)
    with pytest.raises(UserError, match="vocabulary"):
        speculative(model, cond, text, 0, spec.ModelDraft(other, cond), 2, **kw)
