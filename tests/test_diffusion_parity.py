"""Parity of the diffusion decoder and its samplers with the reference DiffusionTts / SpacedDiffusion."""

from __future__ import annotations

import pytest
import torch
from conftest import report

from tortoise.models.diffusion_decoder import DiffusionTts
from tortoise.utils.diffusion import SpacedDiffusion, get_named_beta_schedule, space_timesteps
from tutortoietts.engine import samplers
from tutortoietts.engine.configs import FULL, TINY
from tutortoietts.engine.diffusion import DiffusionDecoder, output_frames, sample_mel
from tutortoietts.errors import UserError

TOLERANCE = 1e-4  # max |diff| allowed, relative to the reference output's largest magnitude



def reference_diffuser(steps: int, cond_free: bool, cond_free_k: float) -> SpacedDiffusion:
    """What the reference's load_discrete_vocoder_diffuser builds (4000 trained steps, epsilon, learned range)."""
    return SpacedDiffusion(
        use_timesteps=space_timesteps(4000, [steps]), model_mean_type="epsilon", model_var_type="learned_range",
        loss_type="mse", betas=get_named_beta_schedule("linear", 4000),
        conditioning_free=cond_free, conditioning_free_k=cond_free_k,
    )


@pytest.fixture(scope="module")
def nets():
    """The reference and ours with the same random weights (every parameter perturbed: some start at zero)."""
    torch.manual_seed(0)
    ref = DiffusionTts(**TINY["diffusion_decoder"]).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    ours = DiffusionDecoder(**TINY["diffusion_decoder"]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def inputs(nets):
    """Voice latent, AR latents and their precomputed embeddings, from both implementations."""
    ref, ours = nets
    generator = torch.Generator().manual_seed(2)
    mels = torch.randn(1, 2, 100, 96, generator=generator)
    latents = torch.randn(1, 23, TINY["diffusion_decoder"]["in_latent_channels"], generator=generator)
    with torch.no_grad():
        cond_ref = ref.get_conditioning(mels)
        cond_ours = ours.conditioning_latent(mels)
    return dict(mels=mels, latents=latents, cond_ref=cond_ref, cond_ours=cond_ours, frames=output_frames(latents.shape[1]))


def assert_close(name: str, ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    diff, scale = report(name, ours, theirs)
    assert diff <= tolerance * max(scale, 1.0), f"{name}: max|diff| {diff:.3e} over {tolerance:.0e} x scale {scale:.3e}"


def compare_state_dicts(config: dict) -> int:
    # Meta tensors: key names and shapes without allocating (or initialising) any weights.
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in DiffusionTts(**config).state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in DiffusionDecoder(**config).state_dict().items()}
    assert sorted(ours) == sorted(theirs), f"missing {set(theirs) - set(ours)}, extra {set(ours) - set(theirs)}"
    mismatched = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not mismatched, mismatched
    return len(theirs)


def test_state_dict_matches_reference_tiny():
    count = compare_state_dicts(TINY["diffusion_decoder"])
    print(f"[parity] tiny state dict: {count} keys, names and shapes identical")


@pytest.mark.full
def test_state_dict_matches_reference_full():
    count = compare_state_dicts(FULL["diffusion_decoder"])
    print(f"[parity] full state dict: {count} keys, names and shapes identical")


def test_conditioning_latent(nets, inputs):
    ref, ours = nets
    assert inputs["cond_ours"].shape == (1, 2 * TINY["diffusion_decoder"]["model_channels"])
    assert_close("conditioning latent, 2 clips", inputs["cond_ours"], inputs["cond_ref"])
    one_clip = inputs["mels"][:, 0]  # (B, 100, S): the reference's 3-D form
    with torch.no_grad():
        assert_close("conditioning latent, 1 clip", ours.conditioning_latent(one_clip), ref.get_conditioning(one_clip))


def test_timestep_independent_latents_and_codes(nets, inputs):
    ref, ours = nets
    frames = inputs["frames"]
    with torch.no_grad():
        theirs = ref.timestep_independent(inputs["latents"], inputs["cond_ref"], frames, False)
        mine = ours.timestep_independent(inputs["latents"], inputs["cond_ours"], frames)
        assert_close("timestep_independent (latents)", mine, theirs)
        guided = ours.timestep_independent(inputs["latents"], inputs["cond_ours"], frames, conditioning_free=True)
        assert guided.shape == (2, mine.shape[1], frames)
        assert_close("timestep_independent, conditioned half of the guidance batch", guided[:1], theirs)
        codes = torch.randint(0, 8193, (1, 23), generator=torch.Generator().manual_seed(3))
        assert_close(
            "timestep_independent (codes)",
            ours.timestep_independent(codes, inputs["cond_ours"], frames),
            ref.timestep_independent(codes, inputs["cond_ref"], frames, False),
        )


# 9 frames: only exact position buckets; 87: offsets up to 86 reach the log-spaced and the clamped ones.
@pytest.mark.parametrize("frames", [9, 87])
def test_forward_with_and_without_conditioning(nets, inputs, frames):
    ref, ours = nets
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 100, frames, generator=generator)
    with torch.no_grad():
        theirs_emb = ref.timestep_independent(inputs["latents"], inputs["cond_ref"], frames, False)
        guided_emb = ours.timestep_independent(inputs["latents"], inputs["cond_ours"], frames, conditioning_free=True)
        for t in (0, 37, 1000, 3999):
            timesteps = torch.tensor([t])
            both = ours(torch.cat([x, x]), timesteps.repeat(2), guided_emb)  # one batched call, both branches
            cond = ref(x, timesteps, precomputed_aligned_embeddings=theirs_emb)
            uncond = ref(x, timesteps, precomputed_aligned_embeddings=theirs_emb, conditioning_free=True)
            assert_close(f"forward T={frames} t={t} conditioned", both[:1], cond)
            assert_close(f"forward T={frames} t={t} unconditioned", both[1:], uncond)


def test_forward_bf16_stays_close(nets, inputs):
    _, ours = nets
    frames = inputs["frames"]
    half = DiffusionDecoder(**TINY["diffusion_decoder"]).eval()
    half.load_state_dict(ours.state_dict())
    half.to(torch.bfloat16)
    x = torch.randn(1, 100, frames, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cond_half = half.conditioning_latent(inputs["mels"])
        emb_half = half.timestep_independent(inputs["latents"], cond_half, frames, conditioning_free=True)
        emb = ours.timestep_independent(inputs["latents"], inputs["cond_ours"], frames, conditioning_free=True)
        for t in (0, 2000):
            timesteps = torch.tensor([t, t])
            out_half = half(torch.cat([x, x]), timesteps, emb_half)
            assert out_half.dtype == torch.float32 and torch.isfinite(out_half).all()
            # bf16 keeps ~3 significant digits; through ~20 layers a few percent of the output scale is expected.
            assert_close(f"bf16 vs fp32 forward t={t}", out_half, ours(torch.cat([x, x]), timesteps, emb), tolerance=5e-2)


def clamped_share(mel: torch.Tensor, clip: bool) -> str:
    return f"{(mel.abs() >= 1).float().mean().item():.0%} of values at +-1" if clip else "unclamped"


def guided_fn(ours, inputs, schedule, cond_free, k):
    emb = ours.timestep_independent(inputs["latents"], inputs["cond_ours"], inputs["frames"], conditioning_free=cond_free)
    return samplers.guided_model(lambda x, t: ours(x, t, emb), schedule, cond_free=cond_free, cond_free_k=k)


# Random weights drive many x_0 predictions into the [-1, 1] clamp, which would hide differences;
# the unclamped runs compare every value.
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_with_guidance_matches_reference(nets, inputs, clip):
    ref, ours = nets
    steps, k, frames = 20, 2.0, inputs["frames"]
    noise = torch.randn(1, 100, frames, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        emb = ref.timestep_independent(inputs["latents"], inputs["cond_ref"], frames, False)
        theirs = reference_diffuser(steps, True, k).ddim_sample_loop(
            ref, (1, 100, frames), noise=noise.clone(), clip_denoised=clip,
            model_kwargs={"precomputed_aligned_embeddings": emb},
        )
        schedule = samplers.respaced_schedule(steps)
        mine = samplers.ddim_sample(guided_fn(ours, inputs, schedule, True, k), schedule, noise.clone(), clip=clip)
    assert_close(f"DDIM 20 steps, guidance k=2, clip={clip} ({clamped_share(theirs, clip)})", mine, theirs)


@pytest.mark.parametrize("cond_free, clip", [(True, True), (False, True), (True, False)])
def test_ddpm_matches_reference_p_sample_loop(nets, inputs, cond_free, clip):
    ref, ours = nets
    steps, k, frames = 30, 2.0, inputs["frames"]
    noise = torch.randn(1, 100, frames, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        emb = ref.timestep_independent(inputs["latents"], inputs["cond_ref"], frames, False)
        torch.manual_seed(123)  # per-step noise: both sides draw from the global RNG in the same order
        theirs = reference_diffuser(steps, cond_free, k).p_sample_loop(
            ref, (1, 100, frames), noise=noise.clone(), clip_denoised=clip,
            model_kwargs={"precomputed_aligned_embeddings": emb},
        )
        after_theirs = torch.rand(1)
        schedule = samplers.respaced_schedule(steps)
        torch.manual_seed(123)
        mine = samplers.ddpm_sample(guided_fn(ours, inputs, schedule, cond_free, k), schedule, noise.clone(), clip=clip)
        after_mine = torch.rand(1)
    assert_close(f"DDPM 30 steps, cond_free={cond_free}, clip={clip} ({clamped_share(theirs, clip)})", mine, theirs)
    assert after_mine.item() == after_theirs.item(), "the samplers consumed the global RNG differently"


def test_sample_mel_matches_do_spectrogram_diffusion(nets, inputs):
    from tortoise.api import do_spectrogram_diffusion, load_discrete_vocoder_diffuser

    ref, ours = nets
    steps, k, temperature = 25, 2.0, 0.8
    with torch.no_grad():
        torch.manual_seed(321)
        theirs = do_spectrogram_diffusion(
            ref, load_discrete_vocoder_diffuser(desired_diffusion_steps=steps, cond_free=True, cond_free_k=k),
            inputs["latents"], inputs["cond_ref"], temperature=temperature, verbose=False,
        )
    torch.manual_seed(321)
    calls = []
    mine = sample_mel(
        ours, inputs["latents"], inputs["cond_ours"], steps=steps, sampler="ddpm", cond_free=True, cond_free_k=k,
        temperature=temperature, progress=lambda done, total: calls.append((done, total)),
    )
    assert_close("sample_mel vs do_spectrogram_diffusion (ddpm, 25 steps, k=2, temperature 0.8)", mine, theirs)
    assert calls[-1] == (steps, steps) and len(calls) == steps

    # The same through an explicit generator and noise: the initial draw is standard normal, scaled inside.
    generator = torch.Generator().manual_seed(321)
    noise = torch.randn(theirs.shape, generator=generator)
    explicit = sample_mel(
        ours, inputs["latents"], inputs["cond_ours"], steps=steps, sampler="ddpm", cond_free=True, cond_free_k=k,
        temperature=temperature, noise=noise, generator=generator,
    )
    assert_close("sample_mel with explicit noise + generator", explicit, theirs)


def test_sample_mel_batch_and_other_samplers(nets, inputs):
    _, ours = nets
    latents = inputs["latents"].repeat(2, 1, 1)
    for sampler in ("ddim", "dpmpp2m"):
        noise = torch.randn(1, 100, inputs["frames"], generator=torch.Generator().manual_seed(8))
        batched = sample_mel(ours, latents, inputs["cond_ours"], steps=10, sampler=sampler, cond_free=True,
                             cond_free_k=2.0, temperature=1.0, noise=noise.repeat(2, 1, 1))
        single = sample_mel(ours, latents[:1], inputs["cond_ours"], steps=10, sampler=sampler, cond_free=True,
                            cond_free_k=2.0, temperature=1.0, noise=noise)
        assert batched.shape == (2, 100, inputs["frames"])
        assert_close(f"{sampler}: batch row 0 vs alone", batched[:1], single)
        assert_close(f"{sampler}: batch row 1 vs alone", batched[1:], single)


def test_sample_mel_rejects_bad_settings(nets, inputs):
    _, ours = nets
    for bad in (dict(sampler="euler", steps=10), dict(sampler="ddpm", steps=0), dict(sampler="ddim", steps=5000)):
        with pytest.raises(UserError):
            sample_mel(ours, inputs["latents"], inputs["cond_ours"], cond_free=False, cond_free_k=1.0, temperature=1.0, **bad)
