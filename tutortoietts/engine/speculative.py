"""Exact speculative sampling of autoregressive codes: a draft proposes k codes, the full model checks them in one pass.

The rule is speculative sampling (Leviathan et al. 2023, arXiv:2211.17192, Algorithm 1; Chen et
al. 2023, arXiv:2302.01318, Algorithm 2). For the next code x_i the draft's distribution q_i and
the full model's p_i are both the *processed* distributions that decoding.py samples from
(repetition penalty over the codes so far including the proposals before i, temperature, top-k
50, top-p). Proposal x_i ~ q_i is kept with probability min(1, p_i(x_i) / q_i(x_i)); at the first
refusal the code is drawn from norm(max(0, p_i - q_i)); if all k are kept, one more comes from
p_{k+1}. Every code then has exactly the full model's distribution given the codes before it, so
the output is distributed as plain sampling's (not the same draws: the random stream differs).

Rows of a batch accept different numbers of codes, so each row keeps its own position: the
verification pass writes its keys and values at per-row cache positions (gpt.RowPositions) and
a row's stale entries past its accepted codes are masked, then overwritten ("rollback" of a
static cache is only a position that does not advance).

Drafts: the model's own first N blocks with its closing norms and head (self-speculation, the
cache shared: those blocks' keys and values for accepted codes are the full model's), or a
smaller checkpoint with the same code vocabulary and its own cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from tutortoietts.engine.decoding import PROMPT_TOKEN, choose_next, sampling_probs, validate_sampling
from tutortoietts.engine.gpt import RowPositions
from tutortoietts.errors import UserError


@dataclass
class SpeculationStats:
    """What the drafts achieved, summed over rounds and rows still running."""

    rounds: int = 0  # verification passes
    proposed: int = 0  # draft codes offered to running rows
    accepted: int = 0  # of those, kept by the accept/reject rule
    row_rounds: int = 0  # (running row, round) pairs: codes per verification = emitted / row_rounds
    emitted: int = 0  # codes written by those rounds (accepted + the corrected or bonus code, less cuts)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    @property
    def codes_per_verification(self) -> float | None:
        return self.emitted / self.row_rounds if self.row_rounds else None

    def to_dict(self) -> dict:
        return dict(rounds=self.rounds, proposed=self.proposed, accepted=self.accepted, row_rounds=self.row_rounds,
                    emitted=self.emitted, acceptance_rate=self.acceptance_rate,
                    codes_per_verification=self.codes_per_verification)


class Stepper:
    """Forward passes of one network over its KV cache, addressed by code index.

    Code j enters at cache position prefix_length + 1 + j (the start code sits at prefix_length)
    with mel position j + 2, as decoding.generate_codes feeds it. One token per row at one shared
    index takes the plain decode_one_token path (bit for bit what plain sampling computes); any
    other shape goes through the per-row path.
    """

    def __init__(self, model, prefix_length: int, layers=None):
        self.model, self.prefix_length, self.layers = model, prefix_length, layers
        self.last_mel_row = model.mel_pos_embedding.rows - 1

    def __call__(self, tokens: torch.Tensor, first: torch.Tensor, lowest: int, highest: int) -> torch.Tensor:
        """tokens (B, T) starting at code index first (B,) (host copies: its min and max) -> logits (B, T, V)."""
        count = tokens.shape[1]
        if count == 1 and lowest == highest:
            logits = self.model.decode_one_token(tokens, input_pos=self.prefix_length + 1 + lowest,
                                                 mel_position=min(lowest + 2, self.last_mel_row), layers=self.layers)
            return logits[:, None]
        index = first[:, None] + torch.arange(count, device=tokens.device)  # (B, T) code indices
        positions = RowPositions.of(self.prefix_length + 1 + index, self.prefix_length + 1 + highest + count)
        # Rows past max_mel_tokens only hold codes that are cut anyway; the clamp keeps the lookup in the table.
        return self.model.decode_rows(tokens, positions, (index + 2).clamp(max=self.last_mel_row), layers=self.layers)


class SelfDraft:
    """The model's first `layers` blocks, then its closing norms and code head; shares the model's KV cache."""

    def __init__(self, layers: int):
        self.layers = layers
        self.name = f"self, first {layers} layers"

    def start(self, model, prefix: torch.Tensor, text_ids: torch.Tensor | None, batch: int, max_codes: int) -> Stepper:
        total = len(model.gpt.h)
        if not 1 <= self.layers <= total:
            raise UserError(f"a self-speculation draft takes 1 to {total} layers of this model, got {self.layers}")
        # The prefill of the full model fills these blocks' cache too; nothing to run here.
        return Stepper(model, prefix.shape[1], layers=range(self.layers))

    def catch_up(self, stepper: Stepper, tokens, first, lowest, highest) -> None:
        """Nothing: the verification pass wrote every block's keys and values, the draft's included."""


class ModelDraft:
    """A separate, smaller autoregressive network with the same code vocabulary and its own cache.

    `cond` is its own conditioning latent (1, d_draft): from its conditioning encoder on the
    voice's clips, as the full model's comes from the full model's.
    """

    def __init__(self, model, cond: torch.Tensor, name: str = "draft checkpoint"):
        self.model, self.cond, self.name = model, cond, name

    def start(self, model, prefix: torch.Tensor, text_ids: torch.Tensor | None, batch: int, max_codes: int) -> Stepper:
        draft = self.model
        if draft.number_mel_codes != model.number_mel_codes or draft.start_mel_token != model.start_mel_token:
            raise UserError("the draft checkpoint's code vocabulary differs from the full model's; it cannot propose codes")
        if text_ids is None:
            raise UserError("a draft checkpoint needs the text ids to build its own prefix")
        device = draft.mel_embedding.weight.device
        draft_prefix = draft.embed_prefix(self.cond.to(device, draft.mel_embedding.weight.dtype), text_ids.to(device))
        draft.setup_caches(batch, draft_prefix.shape[1] + 1 + max_codes)
        draft.prefill(draft_prefix)  # fills its cache for every row; the first code comes from the full model
        return Stepper(draft, draft_prefix.shape[1])

    def catch_up(self, stepper: Stepper, tokens, first, lowest, highest) -> None:
        """Feed the last proposal, which the draft never saw: rows that kept all k continue after it."""
        stepper(tokens, first, lowest, highest)


def auxiliary_generator(generator: torch.Generator | None, device) -> torch.Generator:
    """A second stream for the accept/reject draws, derived from the main generator's current state.

    The proposals and the bonus code draw from the main stream exactly as plain sampling would,
    so a draft equal to the full model reproduces plain sampling's codes; the uniforms and the
    corrected codes come from here. Derived from the state, not the seed: successive batches on
    one generator get different streams. Reading the state draws nothing.
    """
    if generator is None:
        return torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (1,))))
    state = generator.get_state().cpu().numpy().tobytes()
    seed = int.from_bytes(hashlib.sha256(b"speculative:" + state).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator(device).manual_seed(seed)


class MainStream:
    """The caller's generator, with its state noted before each draw of a round.

    Plain sampling draws once per code position while any row runs. A round draws for all its
    positions at once, so when the last rows stop inside it, the stream is set back to where
    plain sampling would have left it: the next batch then draws what it would have drawn. The
    draws undone decided only codes past every row's stop, which nobody keeps.
    """

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator
        self.states: list[torch.Tensor] = []

    def draw(self, probs: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        if self.generator is not None:
            self.states.append(self.generator.get_state())
        return torch.multinomial(probs, num_samples=1, generator=self.generator)[:, 0]

    def keep(self, draws: int) -> None:
        """Undo this round's draws after the first `draws`; start the next round's record."""
        if self.generator is not None and draws < len(self.states):
            self.generator.set_state(self.states[draws])
        self.states = []


@torch.no_grad()
def generate_codes_speculative(
    model,
    prefix: torch.Tensor,
    *,
    batch: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    draft,
    k: int,
    generator: torch.Generator | None = None,
    text_ids: torch.Tensor | None = None,
    stats: SpeculationStats | None = None,
) -> torch.Tensor:
    """decoding.generate_codes with speculation: -> (batch, max_new_tokens) stop-padded codes."""
    if k < 1:
        raise UserError(f"speculation needs at least 1 proposed code per step, got k = {k}")
    stats = stats if stats is not None else SpeculationStats()
    stop, vocab = model.stop_mel_token, model.number_mel_codes
    device = prefix.device
    sampling = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)

    # Room for one round's proposals past the last code kept (they are cut, but the pass computes them).
    model.setup_caches(batch, prefix.shape[1] + 1 + max_new_tokens + k)
    target = Stepper(model, prefix.shape[1])
    proposer = draft.start(model, prefix, text_ids, batch, max_new_tokens + k)
    aux = auxiliary_generator(generator, device)
    main = MainStream(generator)

    codes = torch.full((batch, max_new_tokens + k + 1), stop, dtype=torch.long, device=device)  # scratch past the end
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)  # (B, V) as generate_codes keeps it
    seen[:, PROMPT_TOKEN] = True
    seen[:, model.start_mel_token] = True

    logits = model.prefill(prefix).repeat(batch, 1)  # (B, V)
    first_code = choose_next(logits, seen, generator=generator, **sampling)  # code 0, as plain sampling draws it
    codes[:, 0] = first_code
    seen.scatter_(1, first_code[:, None], True)
    count = torch.ones(batch, dtype=torch.long, device=device)  # codes written per row
    unfinished = first_code != stop

    while True:
        running = unfinished & (count < max_new_tokens)
        if not running.any():  # one host sync per round
            break
        # Index of each row's last code, the one fed first. Rows that are done follow the slowest
        # running row (their outputs are discarded), so aligned rows keep the plain decode path.
        counts = count[running]
        lowest, highest = int(counts.min()) - 1, int(counts.max()) - 1
        # Never propose past max_new_tokens for the slowest row: plain sampling draws no further.
        proposals_now = min(k, max_new_tokens - 1 - (lowest + 1))
        base = torch.where(running, count - 1, lowest)
        last = codes.gather(1, base[:, None])  # (B, 1)

        proposals, draft_probs = propose(proposer, last, base, lowest, highest, seen, proposals_now, main, sampling)
        target_probs = verify(target, last, proposals, base, lowest, highest, seen, sampling)
        kept, new = accept(proposals, draft_probs, target_probs, main, aux)

        # Row b emits proposals[:kept] then the extra code, cut after a stop code and at max_new_tokens.
        steps = torch.arange(proposals_now + 1, device=device)
        emit = steps <= kept[:, None]
        is_stop = (new == stop) & emit
        emit &= (is_stop.int().cumsum(dim=1) - is_stop.int()) == 0  # nothing after the first stop
        emit &= running[:, None] & (count[:, None] + steps < max_new_tokens)
        slots = count[:, None] + steps  # (B, k+1) code indices
        codes.scatter_(1, slots, torch.where(emit, new, codes.gather(1, slots)))
        seen.scatter_(1, torch.where(emit, new, PROMPT_TOKEN), True)  # PROMPT_TOKEN is already seen: a no-op
        emitted = emit.sum(dim=1)
        stopped_at = torch.where(is_stop & emit, steps, proposals_now + 1).min(dim=1).values  # (B,)
        unfinished &= stopped_at > proposals_now
        count += emitted
        if unfinished.any():
            main.keep(proposals_now + 1)
        else:  # plain sampling's last draw was at the last stop
            main.keep(int(stopped_at[running].max()) + 1)

        if proposals_now and ((kept == proposals_now) & running).any():
            draft.catch_up(proposer, proposals[:, -1:], base + proposals_now, lowest + proposals_now, highest + proposals_now)
        stats.rounds += 1
        stats.row_rounds += int(running.sum())
        stats.proposed += proposals_now * int(running.sum())
        stats.accepted += int(kept[running].sum())
        stats.emitted += int(emitted.sum())
    return codes[:, :max_new_tokens]


def propose(proposer, last, base, lowest, highest, seen, count: int, main: MainStream, sampling: dict):
    """The draft's codes one at a time, each from its processed distribution: -> (B, n) codes, (B, n, V) probs."""
    batch, vocab = seen.shape
    proposals = torch.empty(batch, count, dtype=torch.long, device=seen.device)
    draft_probs = torch.empty(batch, count, vocab, device=seen.device)
    draft_seen = seen.clone()
    token = last
    for i in range(count):
        step_logits = proposer(token, base + i, lowest + i, highest + i)[:, 0]  # (B, V)
        probs = sampling_probs(step_logits, draft_seen, **sampling)
        proposals[:, i], draft_probs[:, i] = main.draw(probs), probs
        token = proposals[:, i : i + 1]
        draft_seen.scatter_(1, token, True)
    return proposals, draft_probs


def verify(target, last, proposals, base, lowest, highest, seen, sampling: dict) -> torch.Tensor:
    """The last code and the proposals in one pass of the full model: -> p_1..p_{n+1}, (B, n+1, V) processed."""
    batch, vocab = seen.shape
    count = proposals.shape[1]
    target_logits = target(torch.cat([last, proposals], dim=1), base, lowest, highest)  # (B, n+1, V)
    # Code i+1's penalty sees the proposals before it, as the draft's did.
    verify_seen = seen[:, None].repeat(1, count + 1, 1)  # (B, n+1, V)
    for i in range(count):
        verify_seen[:, i + 1 :].scatter_(2, proposals[:, i, None, None].expand(batch, count - i, 1), True)
    probs = sampling_probs(target_logits.reshape(-1, vocab), verify_seen.reshape(-1, vocab), **sampling)
    return probs.view(batch, count + 1, vocab)


def accept(proposals, draft_probs, target_probs, main: MainStream, aux: torch.Generator):
    """The accept/resample rule per row: -> (kept (B,), the emitted codes (B, n+1): proposals[:kept] then one more)."""
    batch, count = proposals.shape
    rows = torch.arange(batch, device=proposals.device)
    # Keep x_i with probability min(1, p_i(x_i) / q_i(x_i)); q_i(x_i) > 0 since x_i was drawn from it.
    p_proposed = target_probs[:, :count].gather(2, proposals[:, :, None])[:, :, 0]  # (B, n)
    q_proposed = draft_probs.gather(2, proposals[:, :, None])[:, :, 0]
    uniform = torch.rand(batch, count, generator=aux, device=proposals.device)
    kept = (uniform * q_proposed < p_proposed).int().cumprod(dim=1).sum(dim=1)  # (B,) leading acceptances
    # After all n kept: a code from p_{n+1}, drawn for every row from the main stream, as plain
    # sampling's next draw. After a refusal at j: from norm(max(0, p_j - q_j)).
    extra = main.draw(target_probs[:, count])
    if count:
        refused = kept.clamp(max=count - 1)
        residual = (target_probs[rows, refused] - draft_probs[rows, refused]).clamp(min=0)  # (B, V)
        mass = residual.sum(dim=1, keepdim=True)
        # p_j < q_j at the refused code, so the mass is positive; rounding could leave none.
        residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), target_probs[rows, refused])
        corrected = torch.multinomial(residual, num_samples=1, generator=aux)[:, 0]
        extra = torch.where(kept == count, extra, corrected)
    new = torch.cat([proposals, extra[:, None]], dim=1)
    new.scatter_(1, kept[:, None], extra[:, None])  # (B, n+1)
    return kept, new


@torch.no_grad()
def sample(
    model,
    cond: torch.Tensor,
    text_ids: torch.Tensor,
    *,
    num_samples: int,
    max_mel_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    draft,
    k: int,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    stats: SpeculationStats | None = None,
) -> torch.Tensor:
    """AutoregressiveModel.sample with speculation: same arguments and output, plus the draft and k."""
    validate_sampling(num_samples, max_mel_tokens, temperature, top_p, repetition_penalty, batch_size)
    if max_mel_tokens >= model.mel_pos_embedding.rows:
        raise UserError(f"max_mel_tokens must be at most {model.mel_pos_embedding.rows - 1}, got {max_mel_tokens}")
    device = model.mel_embedding.weight.device
    prefix = model.embed_prefix(cond.to(device), text_ids.to(device))  # (1, P, C)
    batch_size = batch_size or num_samples
    batches = []
    for first in range(0, num_samples, batch_size):
        batches.append(
            generate_codes_speculative(
                model, prefix, batch=min(batch_size, num_samples - first), max_new_tokens=max_mel_tokens,
                temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, draft=draft, k=k,
                generator=generator, text_ids=text_ids, stats=stats,
            )
        )
    return torch.cat(batches, dim=0)
