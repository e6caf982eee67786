"""Samplers: schedules against the reference, DPM-Solver++ on an exactly solvable model, guidance, fidelity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tortoise.utils.diffusion import SpacedDiffusion, get_named_beta_schedule, space_timesteps
from tutortoietts.engine import samplers
from tutortoietts.engine.configs import TINY
from tutortoietts.devtools.fidelity import sampler_fidelity
from tutortoietts.engine.diffusion import DiffusionDecoder
from tutortoietts.errors import UserError



def test_linear_betas_match_reference():
    np.testing.assert_array_equal(samplers.linear_betas(4000), get_named_beta_schedule("linear", 4000))


@pytest.mark.parametrize("count", [1, 2, 3, 10, 15, 30, 50, 80, 100, 200, 400, 1000, 3999, 4000])
def test_spaced_timesteps_match_reference(count):
    assert samplers.spaced_timesteps(4000, count) == sorted(space_timesteps(4000, [count]))


@pytest.mark.parametrize("steps", [2, 30, 80, 200, 400])
def test_respaced_schedule_matches_spaced_diffusion(steps):
    ref = SpacedDiffusion(
        use_timesteps=space_timesteps(4000, [steps]), model_mean_type="epsilon", model_var_type="learned_range",
        loss_type="mse", betas=get_named_beta_schedule("linear", 4000),
    )
    ours = samplers.respaced_schedule(steps)
    assert list(ours.timesteps) == ref.timestep_map
    for name in ("alphas_cumprod", "alphas_cumprod_prev", "betas", "posterior_log_variance_clipped"):
        worst = np.abs(getattr(ours, name) - getattr(ref, name)).max()
        print(f"[schedule] {steps} steps {name}: max|diff| = {worst:.3e}")
        assert worst <= 1e-15, name
    # The reference's ramp: cond_free_k * (1 - t/N) with t the respaced index.
    np.testing.assert_allclose(ours.guidance_ramp, 1 - np.arange(steps) / steps, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [2, 5, 10, 20, 50, 200, 1000, 4000])
def test_log_snr_schedule_visits_distinct_timesteps(steps):
    schedule = samplers.log_snr_schedule(steps)
    assert schedule.num_steps == steps
    assert schedule.timesteps[0] == 0 and schedule.timesteps[-1] == 3999
    assert np.all(np.diff(schedule.timesteps) > 0)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_log_snr_schedule_is_even_in_lambda(steps):
    schedule = samplers.log_snr_schedule(steps)
    gaps = -np.diff([schedule.log_snr(i) for i in range(steps)])
    even = samplers.respaced_schedule(steps)
    even_gaps = -np.diff([even.log_snr(i) for i in range(steps)])
    print(f"[schedule] {steps} steps: lambda gaps log-SNR {gaps.min():.3f}..{gaps.max():.3f}, even {even_gaps.min():.3f}..{even_gaps.max():.3f}")
    assert gaps.max() < 1.5 * gaps.min()  # only the rounding to integer timesteps breaks evenness
    assert gaps.max() < even_gaps.max() / 2


def test_bad_settings_raise_user_error():
    for call in (
        lambda: samplers.respaced_schedule(1),
        lambda: samplers.respaced_schedule(4001),
        lambda: samplers.schedule_for("euler", 10),
        lambda: samplers.schedule_for("ddim", 10, "karras"),
    ):
        with pytest.raises(UserError):
            call()


# --- an exactly solvable model: Gaussian data ---------------------------------------------------
# Data x_0 ~ N(mu, s^2) per element. Then x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2), the optimal
# epsilon is sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2), and the probability-flow ODE keeps
# each element's z-score, so x_T maps exactly to mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2).

DATA_STD = 0.3


def gaussian_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.rand(2, 100, 50, generator=generator, dtype=torch.float64) - 0.5
    x_T = torch.randn(2, 100, 50, generator=generator, dtype=torch.float64)
    return mu, x_T


def exact_eps_model(schedule: samplers.Schedule, mu: torch.Tensor) -> samplers.ModelFn:
    def model_fn(x, i):
        alpha, sigma = schedule.alpha(i), schedule.sigma(i)
        return samplers.Prediction(sigma * (x.double() - alpha * mu) / (alpha**2 * DATA_STD**2 + sigma**2), None)

    return model_fn


def exact_solution(mu, x_T, schedule):
    alpha, sigma = schedule.alpha(schedule.num_steps - 1), schedule.sigma(schedule.num_steps - 1)
    return mu + DATA_STD * (x_T - alpha * mu) / math.sqrt(alpha**2 * DATA_STD**2 + sigma**2)


def solver_error(sampler, steps, spacing):
    mu, x_T = gaussian_problem()
    schedule = samplers.SPACINGS[spacing](steps)
    model_fn = exact_eps_model(schedule, mu)
    x0 = (samplers.dpmpp_2m_sample if sampler == "dpmpp2m" else samplers.ddim_sample)(model_fn, schedule, x_T, clip=False)
    return (x0.double() - exact_solution(mu, x_T, schedule)).abs().max().item()


def test_dpm_solver_converges_to_exact_solution():
    errors = {steps: solver_error("dpmpp2m", steps, "log_snr") for steps in (10, 20, 40, 80)}
    ddim = {steps: solver_error("ddim", steps, "log_snr") for steps in errors}
    for steps in errors:
        print(f"[solver] Gaussian data, {steps} steps: DPM-Solver++(2M) max err {errors[steps]:.3e}, DDIM {ddim[steps]:.3e}")
    assert errors[10] > errors[20] > errors[40] > errors[80]
    assert errors[40] / errors[80] > 3.0, "second order: doubling the steps should cut the error ~4x"
    assert errors[80] < 5e-3
    assert all(errors[steps] < ddim[steps] / 3 for steps in errors)


def test_log_snr_spacing_beats_even_spacing_for_dpm_solver():
    for steps in (10, 20):
        even, log_snr = solver_error("dpmpp2m", steps, "even"), solver_error("dpmpp2m", steps, "log_snr")
        print(f"[solver] {steps} steps DPM-Solver++(2M): even spacing err {even:.3e}, log-SNR spacing err {log_snr:.3e}")
        assert log_snr < even / 2


def test_first_order_dpm_solver_is_ddim():
    mu, x_T = gaussian_problem(1)
    schedule = samplers.respaced_schedule(12)
    model_fn = exact_eps_model(schedule, mu)
    ddim = samplers.ddim_sample(model_fn, schedule, x_T, clip=True)
    dpm1 = samplers.dpmpp_2m_sample(model_fn, schedule, x_T, clip=True, order=1)
    diff = (ddim - dpm1).abs().max().item()
    print(f"[solver] DPM-Solver++(1) vs DDIM: max|diff| = {diff:.3e}")
    assert diff < 1e-5


def test_guidance_blends_eps_and_keeps_conditioned_variance():
    schedule = samplers.respaced_schedule(8)
    seen = []

    def network_call(x, timesteps):  # conditioned half: eps 1, var 0.5; unconditioned half: eps -2, var 9
        seen.append((x.shape[0], timesteps.tolist()))
        half = x.shape[0] // 2
        out = torch.empty(x.shape[0], 2 * x.shape[1], x.shape[2])
        out[:half, : x.shape[1]], out[:half, x.shape[1]:] = 1.0, 0.5
        out[half:, : x.shape[1]], out[half:, x.shape[1]:] = -2.0, 9.0
        return out

    model_fn = samplers.guided_model(network_call, schedule, cond_free=True, cond_free_k=2.0)
    x = torch.zeros(3, 4, 5)
    for i in (7, 3, 0):
        pred = model_fn(x, i)
        k = 2.0 * (1 - i / 8)
        assert seen[-1] == (6, [int(schedule.timesteps[i])] * 6)  # one call, both branches
        assert torch.allclose(pred.eps, torch.full_like(x, (1 + k) * 1.0 - k * -2.0))
        assert torch.equal(pred.var_values, torch.full_like(x, 0.5))


def test_ddpm_step_adds_no_noise_on_the_last_step():
    schedule = samplers.respaced_schedule(10)
    x, eps = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    pred = samplers.Prediction(eps, torch.zeros_like(x))
    a = samplers.ddpm_step(schedule, x, 0, pred, torch.randn_like(x), clip=True)
    b = samplers.ddpm_step(schedule, x, 0, pred, torch.randn_like(x), clip=True)
    assert torch.equal(a, b)
    assert torch.allclose(a, samplers.predict_x0(schedule, x, 0, eps, clip=True))


def test_fast_samplers_land_near_many_step_reference():
    """The speed issue's check on a tiny random net: DPM-Solver++ at 10-15 steps vs the reference's 30-step DDPM.

    Distances are RMS log-mel against a 200-step DDIM run from the same x_T. A random network is
    no trained score, so only the robust ordering is asserted; `sampler_fidelity` is what the
    full-size benchmark calls with real weights.
    """
    torch.manual_seed(0)
    net = DiffusionDecoder(**TINY["diffusion_decoder"]).eval()
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 23, TINY["diffusion_decoder"]["in_latent_channels"], generator=generator)
    with torch.no_grad():
        cond = net.conditioning_latent(torch.randn(1, 1, 100, 96, generator=generator))
    distances = sampler_fidelity(
        net, latents, cond,
        {"dpmpp2m-10": ("dpmpp2m", 10), "dpmpp2m-15": ("dpmpp2m", 15), "ddim-15": ("ddim", 15), "ddpm-30": ("ddpm", 30)},
        reference=("ddim", 200), cond_free=True, cond_free_k=2.0, seed=0,
    )
    for name, distance in distances.items():
        print(f"[fidelity] {name} vs 200-step DDIM: RMS log-mel distance {distance:.4f}")
    assert distances["dpmpp2m-10"] < distances["ddpm-30"]
    assert distances["dpmpp2m-15"] < distances["ddpm-30"]
