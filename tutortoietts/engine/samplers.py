"""Samplers on Tortoise's discrete noise schedule: DDPM (the reference's), DDIM and DPM-Solver++(2M).

Nothing here touches a network. A sampler sees one function, `model_fn(x, i) -> Prediction`,
where `i` indexes the respaced schedule (0 = least noisy, N-1 = pure noise). `guided_model`
builds such a function from a batched network call and owns conditioning-free guidance, so
every sampler gets the same blended prediction the reference's `p_mean_variance` computes.

Conventions (Ho et al. 2020; Lu et al. 2022, arXiv:2211.01095): x_t = alpha_t x_0 + sigma_t eps
with alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t), lambda_t = log(alpha_t / sigma_t).
Schedules are float64 numpy (as the reference keeps them); tensors are stepped in fp32 whatever
dtype the network runs in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, NamedTuple

import numpy as np
import torch

from tutortoietts.engine import limits
from tutortoietts.engine.limits import MIN_DIFFUSION_STEPS, SAMPLER_NAMES, TRAINED_STEPS
from tutortoietts.errors import UserError


class Prediction(NamedTuple):
    """What the network says at one step: epsilon, and the learned-range variance channels (or None)."""

    eps: torch.Tensor  # (B, C, T) fp32
    var_values: torch.Tensor | None  # (B, C, T) in [-1, 1]: 0 -> posterior variance, 1 -> beta


ModelFn = Callable[[torch.Tensor, int], Prediction]
Progress = Callable[[int, int], None]  # (steps done, total steps)


# --- the noise schedule ---------------------------------------------------------------------


def linear_betas(trained_steps: int = TRAINED_STEPS) -> np.ndarray:
    """Ho et al.'s linear beta schedule (1e-4 .. 0.02 over 1000 steps), stretched to `trained_steps`."""
    stretch = 1000 / trained_steps
    return np.linspace(stretch * 1e-4, stretch * 0.02, trained_steps, dtype=np.float64)


def spaced_timesteps(trained_steps: int, count: int) -> list[int]:
    """`count` trained timesteps spread evenly over [0, trained_steps - 1], first and last included.

    The running float sum and Python's round() (ties to even) are kept on purpose: they decide
    which timesteps the reference's `space_timesteps(n, [count])` picks, and we must pick the same.
    """
    if not 1 <= count <= trained_steps:
        raise UserError(f"diffusion steps must be between 1 and {trained_steps}, got {count}")
    stride = 1.0 if count == 1 else (trained_steps - 1) / (count - 1)
    picked, position = [], 0.0
    for _ in range(count):
        picked.append(round(position))
        position += stride
    return sorted(set(picked))


@dataclass(frozen=True, eq=False)
class Schedule:
    """A sampling schedule: the trained timesteps visited and their cumulative alphas (float64).

    Index i runs over the visited timesteps in increasing noise; a sampler goes from the last
    index down to 0 and then to the clean signal. Between two visited timesteps the process is
    the reference's respaced one: its betas are re-derived from the alphas of its neighbours.
    """

    timesteps: np.ndarray  # (N,) int64, increasing: the trained timestep the network sees at index i
    alphas_cumprod: np.ndarray  # (N,) float64
    guidance_ramp: np.ndarray  # (N,) fraction of cond_free_k applied at index i

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @cached_property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @cached_property
    def betas(self) -> np.ndarray:
        """The respaced process's own betas: one step of it jumps between two kept timesteps."""
        return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

    @cached_property
    def posterior_variance(self) -> np.ndarray:
        """Variance of q(x_{i-1} | x_i, x_0) (Ho et al. eq. 7)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        # The posterior variance is 0 at i = 0; its log takes the i = 1 value there instead.
        variance = self.posterior_variance
        return np.log(np.append(variance[1] if len(variance) > 1 else self.betas[0], variance[1:]))

    def alpha(self, i: int) -> float:
        return math.sqrt(self.alphas_cumprod[i])

    def sigma(self, i: int) -> float:
        return math.sqrt(1.0 - self.alphas_cumprod[i])

    def log_snr(self, i: int) -> float:
        """lambda_i = log(alpha_i / sigma_i), the half log signal-to-noise ratio DPM-Solver steps in."""
        return math.log(self.alpha(i)) - math.log(self.sigma(i))


def trained_alphas_cumprod(trained_steps: int = TRAINED_STEPS) -> np.ndarray:
    return np.cumprod(1.0 - linear_betas(trained_steps))


def respaced_schedule(steps: int, trained_steps: int = TRAINED_STEPS) -> Schedule:
    """The `steps`-step process the reference's SpacedDiffusion builds: evenly spaced trained timesteps."""
    if not MIN_DIFFUSION_STEPS <= steps <= trained_steps:
        raise UserError(f"diffusion steps must be between {MIN_DIFFUSION_STEPS} and {trained_steps}, got {steps}")
    kept = spaced_timesteps(trained_steps, steps)
    kept_cumprod = trained_alphas_cumprod(trained_steps)[kept]
    # The reference re-derives betas between kept steps and takes their cumprod again; doing the
    # same keeps our float64 alphas bit-identical to its.
    betas = 1.0 - kept_cumprod / np.append(1.0, kept_cumprod[:-1])
    # The reference's guidance ramp, 1 - i/N: none at pure noise, full strength on the last step.
    ramp = 1.0 - np.arange(steps) / steps
    return Schedule(np.asarray(kept, dtype=np.int64), np.cumprod(1.0 - betas), ramp)


def log_snr_schedule(steps: int, trained_steps: int = TRAINED_STEPS) -> Schedule:
    """`steps` trained timesteps evenly spaced in log-SNR (lambda), both ends included.

    DPM-Solver's step error grows with the lambda gap h of each step (Lu et al. 2022, Sec. 3.3).
    Even spacing in trained time leaves, for this linear schedule, one huge final gap (at 20 steps
    lambda jumps 1.7 -> 5.3 on the last step while every other step is < 0.7), which dominates
    the error; even lambda spacing removes it. Timesteps are rounded to trained integers: the
    network only saw those.
    """
    if not MIN_DIFFUSION_STEPS <= steps <= trained_steps:
        raise UserError(f"diffusion steps must be between {MIN_DIFFUSION_STEPS} and {trained_steps}, got {steps}")
    cumprod = trained_alphas_cumprod(trained_steps)
    lambdas = 0.5 * (np.log(cumprod) - np.log1p(-cumprod))  # (trained,) decreasing in t
    targets = np.linspace(lambdas[0], lambdas[-1], steps)  # decreasing, so the timesteps come out increasing
    # np.interp wants increasing x: walk the trained lambdas from the noisy end.
    times = np.interp(targets, lambdas[::-1], np.arange(trained_steps - 1, -1, -1, dtype=np.float64))
    kept = np.round(times).astype(np.int64)
    # Near t = 0 one trained step spans more lambda than the even gap, so rounding can repeat a
    # timestep; nudge repeats to the next free integer (from below, then capped from above).
    for k in range(1, steps):
        kept[k] = max(kept[k], kept[k - 1] + 1)
    for k in range(steps - 2, -1, -1):
        kept[k] = min(kept[k], kept[k + 1] - 1)
    # The reference's ramp 1 - i/N at its own timesteps tends to 1 - t/(trained - 1) as N grows:
    # the same guidance at each noise level as a many-step reference run.
    ramp = 1.0 - kept / (trained_steps - 1)
    return Schedule(kept, cumprod[kept], ramp)


SPACINGS = {"even": respaced_schedule, "log_snr": log_snr_schedule}
DEFAULT_SPACING = {"ddpm": "even", "ddim": "even", "dpmpp2m": "log_snr"}


def schedule_for(sampler: str, steps: int, spacing: str | None = None) -> Schedule:
    """The schedule a sampler runs on: the reference's even spacing, or log-SNR for DPM-Solver++."""
    limits.check("sampler", sampler)  # the rules settings validation applied before anything ran
    limits.check("diffusion_iterations", steps)
    spacing = spacing or DEFAULT_SPACING[sampler]
    if spacing not in SPACINGS:
        raise UserError(f"unknown timestep spacing {spacing!r} (expected one of {', '.join(SPACINGS)})")
    return SPACINGS[spacing](steps)


# --- guidance: one batched network call -> one prediction -----------------------------------


def guided_model(
    network_call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: Schedule,
    *,
    cond_free: bool,
    cond_free_k: float,
) -> ModelFn:
    """Wrap `network_call(x, timesteps) -> [B, 2C, T]` as a sampler's `model_fn(x, i)`.

    With `cond_free`, the network is called once on [x; x] (its conditioned and unconditioned
    embeddings stacked in the same order, see DiffusionDecoder.timestep_independent) and epsilon
    is blended as eps = (1 + k) eps_cond - k eps_uncond, k = cond_free_k x the schedule's ramp. The
    variance channels come from the conditioned half only, as in the reference.
    """

    def model_fn(x: torch.Tensor, i: int) -> Prediction:
        batch, channels = x.shape[:2]
        copies = 2 if cond_free else 1
        timesteps = torch.full((batch * copies,), int(schedule.timesteps[i]), dtype=torch.long, device=x.device)
        out = network_call(torch.cat([x] * copies), timesteps).float()  # (copies*B, 2C, T)
        eps, var_values = out[:batch, :channels], out[:batch, channels:]
        if cond_free:
            k = cond_free_k * float(schedule.guidance_ramp[i])
            eps = (1.0 + k) * eps - k * out[batch:, :channels]
        return Prediction(eps, var_values if var_values.shape[1] else None)

    return model_fn


# --- conversions and single steps ------------------------------------------------------------


def predict_x0(schedule: Schedule, x: torch.Tensor, i: int, eps: torch.Tensor, clip: bool) -> torch.Tensor:
    """x_0 = (x_i - sigma_i eps) / alpha_i, clamped to the normalised mel range [-1, 1] when `clip`."""
    ab = schedule.alphas_cumprod[i]
    x0 = math.sqrt(1.0 / ab) * x - math.sqrt(1.0 / ab - 1.0) * eps
    return x0.clamp(-1.0, 1.0) if clip else x0


def ddpm_step(schedule: Schedule, x: torch.Tensor, i: int, pred: Prediction, noise: torch.Tensor, clip: bool) -> torch.Tensor:
    """One ancestral step x_i -> x_{i-1}: the posterior mean given x_0, plus the learned-range variance.

    Ho et al. eq. 7 for the mean; Nichol & Dhariwal (2021) eq. 15 for the variance, interpolated in
    log space between the posterior variance and beta_i. No noise is added on the final step.
    """
    x0 = predict_x0(schedule, x, i, pred.eps, clip)
    ab, ab_prev, beta = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i], schedule.betas[i]
    mean = (beta * math.sqrt(ab_prev) / (1.0 - ab)) * x0 + ((1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab)) * x
    if i == 0:
        return mean
    small_log = float(schedule.posterior_log_variance_clipped[i])
    if pred.var_values is None:
        log_variance = torch.full_like(x, small_log)
    else:
        frac = (pred.var_values + 1.0) / 2.0
        log_variance = frac * math.log(beta) + (1.0 - frac) * small_log
    return mean + torch.exp(0.5 * log_variance) * noise


def first_order_step(schedule: Schedule, x: torch.Tensor, i: int, x0: torch.Tensor) -> torch.Tensor:
    """DDIM (eta = 0) = DPM-Solver++(1), Lu et al. 2022 eq. 9: x_s = (sigma_s/sigma_i) x_i - alpha_s (e^-h - 1) x_0.

    At i = 0 the target is the clean signal (sigma = 0, alpha = 1), where the update is x_0 itself.
    """
    if i == 0:
        return x0
    s = i - 1
    h = schedule.log_snr(s) - schedule.log_snr(i)
    return (schedule.sigma(s) / schedule.sigma(i)) * x + (schedule.alpha(s) * -math.expm1(-h)) * x0


def second_order_step(
    schedule: Schedule, x: torch.Tensor, i: int, x0: torch.Tensor, x0_before: torch.Tensor, i_before: int
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2: the first-order update with x_0 replaced by

    D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i_before},  r = h_before / h,
    a backward difference over the previous step's data prediction (no extra network call).
    """
    s = i - 1
    h = schedule.log_snr(s) - schedule.log_snr(i)
    h_before = schedule.log_snr(i) - schedule.log_snr(i_before)
    half_inv_r = h / (2.0 * h_before)
    blended = (1.0 + half_inv_r) * x0 - half_inv_r * x0_before
    return first_order_step(schedule, x, i, blended)


# --- whole sampling loops ---------------------------------------------------------------------


def standard_normal(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """A float32 N(0, 1) draw from `generator` (or the global RNG), placed on `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)


def ddpm_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clip: bool = True,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The reference's p_sample_loop: N ancestral steps from x (= x_T) to x_0.

    One fresh normal draw per step, after the network call and also on the last step (where it is
    unused), so that with the same seed we consume the RNG exactly as the reference does.
    """
    x = x.float()
    for done, i in enumerate(reversed(range(schedule.num_steps)), start=1):
        pred = model_fn(x, i)
        noise = standard_normal(x.shape, generator, x.device)
        x = ddpm_step(schedule, x, i, pred, noise, clip)
        if progress:
            progress(done, schedule.num_steps)
    return x


def ddim_sample(
    model_fn: ModelFn, schedule: Schedule, x: torch.Tensor, *, clip: bool = True, progress: Progress | None = None
) -> torch.Tensor:
    """The reference's ddim_sample_loop with eta = 0: deterministic, N network calls."""
    x = x.float()
    for done, i in enumerate(reversed(range(schedule.num_steps)), start=1):
        x0 = predict_x0(schedule, x, i, model_fn(x, i).eps, clip)
        x = first_order_step(schedule, x, i, x0)
        if progress:
            progress(done, schedule.num_steps)
    return x


def dpmpp_2m_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x: torch.Tensor,
    *,
    clip: bool = True,
    order: int = 2,
    progress: Progress | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the respaced timesteps, N network calls.

    Data prediction with the same clamp the reference applies to x_0 (the paper's thresholding).
    The first step has no history and the last one lands on sigma = 0, where the second-order
    correction is undefined (h = inf), so both are first order. `order=1` makes it DDIM.
    """
    x = x.float()
    x0_before, i_before = None, None
    for done, i in enumerate(reversed(range(schedule.num_steps)), start=1):
        x0 = predict_x0(schedule, x, i, model_fn(x, i).eps, clip)
        if order == 1 or x0_before is None or i == 0:
            x = first_order_step(schedule, x, i, x0)
        else:
            x = second_order_step(schedule, x, i, x0, x0_before, i_before)
        x0_before, i_before = x0, i
        if progress:
            progress(done, schedule.num_steps)
    return x


def run_sampler(
    name: str,
    model_fn: ModelFn,
    schedule: Schedule,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clip: bool = True,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Dispatch on Settings.sampler: "ddpm" (reference), "ddim" or "dpmpp2m"."""
    if name == "ddpm":
        return ddpm_sample(model_fn, schedule, x, generator=generator, clip=clip, progress=progress)
    if name == "ddim":
        return ddim_sample(model_fn, schedule, x, clip=clip, progress=progress)
    if name == "dpmpp2m":
        return dpmpp_2m_sample(model_fn, schedule, x, clip=clip, progress=progress)
    raise UserError(f"unknown sampler {name!r} (expected one of {', '.join(SAMPLER_NAMES)})")
