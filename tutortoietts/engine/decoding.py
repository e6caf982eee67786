"""The autoregressive sampling loop: prefill, one cached decode step per code, transformers' sampling rules.

The reference samples with transformers 4.31 `generate(do_sample=True)`. To draw the same codes
from the same random stream, every step repeats its arithmetic in its order, in fp32:

1. repetition penalty (CTRL, arXiv:1909.05858 eq. 2) on every token id in the sequence so far,
   which in the reference includes its placeholder prompt ids (1 and the start code);
2. temperature;
3. top-k with k = 50: transformers' default, which the reference never overrides;
4. top-p (nucleus, arXiv:1904.09751) keeping at least one token;
5. softmax, then `torch.multinomial(probs, 1)`.

Rows that have produced the stop token keep receiving it (it is also the pad token); the loop
ends when every row has stopped or max_new_tokens codes exist.

Mel positions during decoding: the reference's cached step adds mel position row
`len(attention_mask) - prefix_length`, which is one more than the code's index in the sequence
(the start code takes row 0, the first sampled code row 2, not 1). The checkpoint was sampled
that way, so we keep it; latents() uses the training layout (rows 0, 1, 2, ...) as the reference
does.
"""

from __future__ import annotations

from typing import Callable

import torch

from tutortoietts.engine import limits
from tutortoietts.engine.timing import NO_INSTRUMENTS, Instruments
from tutortoietts.errors import UserError

TOP_K = 50  # transformers' GenerationConfig.top_k default, active in every reference generate() call
PROMPT_TOKEN = 1  # id of the reference's placeholder prompt tokens, seen by the repetition penalty


def validate_sampling(num_samples, max_mel_tokens, temperature, top_p, repetition_penalty, batch_size) -> None:
    """Raise UserError for sampling values outside the settings' rules (limits.RULES, the same ones
    settings validation applies before anything runs)."""
    limits.check("num_autoregressive_samples", num_samples)
    limits.check("max_mel_tokens", max_mel_tokens)
    limits.check("temperature", temperature)
    limits.check("top_p", top_p)
    limits.check("repetition_penalty", repetition_penalty)
    if batch_size is not None and batch_size < 1:  # resolved by then: Settings.batch_size() is at least 1
        raise UserError(f"autoregressive batch size must be at least 1, got {batch_size}")


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every already-seen token less likely: divide a positive logit by `penalty`, multiply a negative one.

    A (B, V) mask of seen ids replaces transformers' gather/scatter over the growing id list:
    same values, constant cost per step.
    """
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf."""
    kth = torch.topk(scores, min(k, scores.shape[-1])).values[:, -1:]  # (B, 1)
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one).

    The same sort / softmax / cumsum as transformers, so the cut falls on the same token.
    """
    sorted_scores, order = torch.sort(scores, descending=False)  # ascending: the tail to drop comes first
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[:, -1:] = False  # the most likely token always stays
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def sampling_probs(
    logits: torch.Tensor,
    seen: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
) -> torch.Tensor:
    """The distribution one sampling step draws from, every rule applied: fp32 logits (B, V) -> probs (B, V).

    Speculative decoding compares these processed distributions, the draft's and the full model's.
    """
    scores = logits
    if repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, seen, repetition_penalty)
    if temperature != 1.0:
        scores = scores / temperature
    scores = top_k_filter(scores, TOP_K)
    if top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    return torch.softmax(scores, dim=-1)


def choose_next(
    logits: torch.Tensor,
    seen: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One sampling step on fp32 logits (B, V) -> next ids (B,)."""
    probs = sampling_probs(logits, seen, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


@torch.no_grad()
def generate_codes(
    model,
    prefix: torch.Tensor,
    *,
    batch: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    generator: torch.Generator | None = None,
    instruments: Instruments = NO_INSTRUMENTS,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample `batch` code rows after the shared prefix (1, P, C): -> (batch, max_new_tokens), stop-padded.

    The prefix is run once at batch 1 and its keys and values copied to every cache row; from
    then on one decode call per code, the cache written in place.

    on_step(step, codes (B,), latents (B, C)) is called after each step with the codes just drawn
    (stop-padded rows included) and the latents they were drawn from: the model's last hidden state
    after final_norm, as the reference's stream generator yields them. It may raise to stop the loop.
    """
    stop = model.stop_mel_token
    prefix_length = prefix.shape[1]
    device = prefix.device
    model.setup_caches(batch, prefix_length + max_new_tokens)

    codes = torch.full((batch, max_new_tokens), stop, dtype=torch.long, device=device)
    seen = torch.zeros(batch, model.number_mel_codes, dtype=torch.bool, device=device)  # (B, V)
    # The reference's prompt ids take part in its repetition penalty.
    seen[:, PROMPT_TOKEN] = True
    seen[:, model.start_mel_token] = True
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    sampling = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, generator=generator)

    if on_step is None:
        logits = model.prefill(prefix).repeat(batch, 1)  # (B, V): every row starts from the same prefix
    else:
        latents = model.prefill_latent(prefix).repeat(batch, 1)  # (B, C)
        logits = model.latent_logits(latents)
    for step in range(max_new_tokens):
        if step > 0:
            # The code sampled at step-1 enters at cache position P+step (the start code sits at
            # P) and, like in the reference, takes mel position row step+1.
            if on_step is None:
                logits = model.decode_one_token(tokens, input_pos=prefix_length + step, mel_position=step + 1)
            else:
                latents = model.decode_latent(tokens, input_pos=prefix_length + step, mel_position=step + 1)
                logits = model.latent_logits(latents)
        instruments.decode_step(step)
        with instruments.range("ar:sampling"):
            next_ids = choose_next(logits, seen, **sampling)
        next_ids = torch.where(unfinished, next_ids, stop)  # stopped rows keep padding
        codes[:, step] = next_ids
        seen.scatter_(1, next_ids[:, None], True)
        unfinished &= next_ids != stop
        if on_step is not None:
            on_step(step, next_ids, latents)
        # One host sync per step, as in the reference: an extra step would draw extra random
        # numbers and shift the stream of the next batch.
        if not unfinished.any():
            break
        tokens = next_ids[:, None]  # (B, 1)
    return codes
