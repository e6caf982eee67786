"""Drives the reference tortoise-tts 3.0.0 networks stage by stage, as its api.py tts() does, for `bench`.

This is the one runtime module allowed to import the reference's model code: `bench` measures us
against it. The imports are lazy (inside functions), behind a stand-in for torchaudio, which the
reference imports at module level but never calls on these paths.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tutortoietts.engine.timing import StageTimer

CALM_TOKEN = 83  # the reference's code for silence (api.py)


def install_torchaudio_stand_in() -> None:
    """Register an empty `torchaudio` so the reference's model modules import beside the CPU build of torch."""
    if "torchaudio" in sys.modules:
        return
    module = types.ModuleType("torchaudio")
    # A real __spec__: transformers probes optional packages with importlib.util.find_spec.
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None)
    for sub in ("functional", "transforms"):
        child = types.ModuleType(f"torchaudio.{sub}")
        child.__spec__ = importlib.machinery.ModuleSpec(f"torchaudio.{sub}", loader=None)
        setattr(module, sub, child)
        sys.modules[f"torchaudio.{sub}"] = child
    sys.modules["torchaudio"] = module


@dataclass
class ReferenceModels:
    """The reference networks, loaded from one checkpoint folder and moved to one device."""

    autoregressive: torch.nn.Module
    clvp: torch.nn.Module
    diffusion: torch.nn.Module
    vocoder: torch.nn.Module
    device: torch.device
    kv_cache: bool


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_reference(models_dir: Path, config: dict[str, dict], device: str, kv_cache: bool) -> ReferenceModels:
    """Build the reference networks with `config`'s constructor keywords and load the checkpoints strictly."""
    install_torchaudio_stand_in()
    from tortoise.models.autoregressive import UnifiedVoice
    from tortoise.models.clvp import CLVP
    from tortoise.models.diffusion_decoder import DiffusionTts
    from tortoise.models.vocoder import UnivNetGenerator

    models_dir = Path(models_dir)
    target = torch.device(device)

    autoregressive = UnifiedVoice(**config["autoregressive"]).eval()
    # api.py loads this one with strict=False (the inference model's extra keys are rebuilt below).
    autoregressive.load_state_dict(_load(models_dir / "autoregressive.pth"), strict=False)
    autoregressive.post_init_gpt2_config(use_deepspeed=False, kv_cache=kv_cache, half=False)

    clvp = CLVP(**config["clvp2"]).eval()
    clvp.load_state_dict(_load(models_dir / "clvp2.pth"))

    diffusion = DiffusionTts(**config["diffusion_decoder"]).eval()
    diffusion.load_state_dict(_load(models_dir / "diffusion_decoder.pth"))

    vocoder = UnivNetGenerator(**config["vocoder"])
    vocoder.load_state_dict(_load(models_dir / "vocoder.pth")["model_g"])
    vocoder.eval(inference=True)  # folds weight norm, as api.py does

    # api.py shuttles each network to the GPU and back per stage; keeping them resident instead
    # gives the reference its best case and keeps transfer time out of the stage timings.
    return ReferenceModels(
        autoregressive=autoregressive.to(target),
        clvp=clvp.to(target),
        diffusion=diffusion.to(target),
        vocoder=vocoder.to(target),
        device=target,
        kv_cache=kv_cache,
    )


def fix_codes(codes: torch.Tensor, stop_token: int) -> torch.Tensor:
    """The reference's fix_autoregressive_output, row by row (imported, so it is the reference's own)."""
    install_torchaudio_stand_in()
    from tortoise.api import fix_autoregressive_output

    codes = codes.clone()
    for row in range(codes.shape[0]):
        codes[row] = fix_autoregressive_output(codes[row], stop_token, complain=False)
    return codes


def _diffuser(steps: int, cond_free: bool, cond_free_k: float):
    install_torchaudio_stand_in()
    from tortoise.api import load_discrete_vocoder_diffuser

    return load_discrete_vocoder_diffuser(desired_diffusion_steps=steps, cond_free=cond_free, cond_free_k=cond_free_k)


def run_reference(
    models: ReferenceModels,
    text_ids: torch.Tensor,  # (1, n) tokenizer ids, unpadded
    auto_latent: torch.Tensor,  # (1, d_ar)
    diffusion_latent: torch.Tensor,  # (1, 2C)
    *,
    num_samples: int,
    code_length: int,
    diffusion_steps: int = 30,
    cond_free: bool = False,
    seed: int = 0,
    timer: StageTimer,
) -> dict:
    """One ultra_fast-style synthesis with the reference's stages, each timed under its stage name.

    Settings are api.py's tts_with_preset defaults (temperature .8, top_p .8, repetition penalty 2,
    length penalty 1, cond_free_k 2); k=1 result, as tts() returns by default.
    """
    install_torchaudio_stand_in()
    from tortoise.api import do_spectrogram_diffusion

    device = models.device
    torch.manual_seed(seed)
    text = F.pad(text_ids.to(device), (0, 1))  # (1, n+1): api.py's "may not be necessary" pad
    auto_latent = auto_latent.to(device)
    diffusion_latent = diffusion_latent.to(device)
    ar = models.autoregressive
    stop = ar.stop_mel_token

    with torch.no_grad():
        with timer.stage("autoregressive"):
            codes = ar.inference_speech(
                auto_latent, text, do_sample=True, top_p=0.8, temperature=0.8,
                num_return_sequences=num_samples, length_penalty=1.0, repetition_penalty=2.0,
                max_generate_length=code_length,
            )  # (num_samples, steps run)
            steps = codes.shape[1]
            codes = F.pad(codes, (0, code_length - steps), value=stop)  # (num_samples, T)

        with timer.stage("rerank"):
            fixed = fix_codes(codes, stop)
            scores = models.clvp(text.repeat(fixed.shape[0], 1), fixed, return_loss=False)  # (num_samples,)
            best = fixed[torch.topk(scores, k=1).indices]  # (1, T)

        with timer.stage("latents"):
            latents = ar(
                auto_latent, text, torch.tensor([text.shape[-1]], device=device), best,
                torch.tensor([best.shape[-1] * ar.mel_length_compression], device=device),
                return_latent=True, clip_inputs=False,
            )  # (1, T, d_ar)

        with timer.stage("diffusion"):
            latents = trim_at_calm(best[0], latents)
            diffuser = _diffuser(diffusion_steps, cond_free, 2.0)
            mel = do_spectrogram_diffusion(models.diffusion, diffuser, latents, diffusion_latent, temperature=1.0, verbose=False)

        with timer.stage("vocoder"):
            wav = models.vocoder.inference(mel)  # (1, 1, samples)

    return dict(codes=codes.cpu(), scores=scores.float().cpu(), latents=latents.float().cpu(),
                mel=mel.float().cpu(), wav=wav.float().cpu(), ar_steps=steps)


def trim_at_calm(codes: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """api.py's rule: cut the latents where more than 8 calm codes in a row begin the end of speech."""
    run = 0
    for position in range(codes.shape[-1]):
        run = run + 1 if int(codes[position]) == CALM_TOKEN else 0
        if run > 8:
            return latents[:, :position]
    return latents


def probe_reference(models: ReferenceModels, probe: dict) -> dict:
    """Outputs on fixed inputs and seeds, compared against ours for fidelity."""
    install_torchaudio_stand_in()
    from tortoise.api import do_spectrogram_diffusion

    device = models.device
    ar = models.autoregressive
    text = F.pad(probe["text_ids"].to(device), (0, 1))
    codes = probe["codes"].to(device)  # (k, T)
    k = codes.shape[0]
    with torch.no_grad():
        latents = ar(
            probe["auto_latent"].to(device).repeat(k, 1), text.repeat(k, 1),
            torch.tensor([text.shape[-1]], device=device), codes,
            torch.tensor([codes.shape[-1] * ar.mel_length_compression], device=device),
            return_latent=True, clip_inputs=False,
        )  # (k, T, d)
        logits = ar.mel_head(latents)  # (k, T, vocab)
        scores = models.clvp(text.repeat(k, 1), codes, return_loss=False)  # (k,)
        wav = models.vocoder.inference(probe["mel"].to(device), probe["vocoder_noise"].to(device))
        # DDPM from fixed latents; our diffuse() draws the same numbers from a generator with this seed.
        torch.manual_seed(probe["reference_diffusion_seed"])
        mel = do_spectrogram_diffusion(
            models.diffusion, _diffuser(probe["diffusion_steps"], False, 2.0), probe["ar_latents"].to(device),
            probe["diffusion_latent"].to(device), temperature=1.0, verbose=False,
        )
    return dict(latents=latents.float().cpu(), logits=logits.float().cpu(), scores=scores.float().cpu(),
                wav=wav.float().cpu(), mel=mel.float().cpu())
