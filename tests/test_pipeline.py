"""The Tortoise facade on tiny random weights: shapes, lengths, determinism, stages alone = synthesize."""

from __future__ import annotations

import pytest
import torch

from tutortoietts.engine import Clip, Tortoise, VoiceLatents
from tutortoietts.engine import configs, pipeline
from tutortoietts.errors import UserError
from tutortoietts.settings import Settings

D_AR = configs.TINY["autoregressive"]["model_dim"]
D_DIFF = 2 * configs.TINY["diffusion_decoder"]["model_channels"]

SETTINGS = Settings(
    num_autoregressive_samples=3, max_mel_tokens=24, diffusion_iterations=4, sampler="ddim",
    cond_free=True, cond_free_k=2.0, temperature=0.8, top_p=0.8, precision="fp32",
)
TEXT = "Hello there, 2 worlds."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: thread hand-offs cost more than they save, and on a busy machine spinning
    # OpenMP workers make the decode loop ~50x slower. Restored for the other test files.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tts(tiny_models_dir, one_thread):
    return Tortoise.load(tiny_models_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def voice(tts):
    return tts.random_voice(seed=1)


@pytest.fixture(scope="module")
def clip(tts, voice):
    return tts.synthesize(TEXT, voice, SETTINGS, seed=7)


def test_synthesize_length_matches_codes(clip):
    assert isinstance(clip, Clip) and clip.sample_rate == 24000
    assert clip.samples.dtype == torch.float32 and clip.samples.dim() == 1
    code_frames = clip.codes.shape[0]
    mel_frames = code_frames * 4 * 24000 // 22050
    print(f"codes {code_frames} -> mel frames {mel_frames} -> samples {clip.samples.shape[0]} ({clip.seconds:.2f} s)")
    assert 0 < code_frames <= SETTINGS.max_mel_tokens
    assert clip.samples.shape[0] == mel_frames * 256
    assert torch.isfinite(clip.samples).all() and clip.samples.abs().max() <= 1.0
    assert clip.samples.std() > 0
    assert set(clip.timings) == set(pipeline.STAGES) and all(t >= 0 for t in clip.timings.values())
    print("timings", {k: round(v, 3) for k, v in clip.timings.items()})


def test_same_seed_same_audio_other_seed_other_audio(tts, voice, clip):
    again = tts.synthesize(TEXT, voice, SETTINGS, seed=7)
    other = tts.synthesize(TEXT, voice, SETTINGS, seed=8)
    assert torch.equal(again.samples, clip.samples) and torch.equal(again.codes, clip.codes)
    differs = other.samples.shape != clip.samples.shape or not torch.equal(other.samples, clip.samples)
    print("seed 7 vs 8 max|diff|:", (other.samples[: clip.samples.shape[0]] - clip.samples[: other.samples.shape[0]]).abs().max().item())
    assert differs


def test_global_rng_untouched(tts, voice):
    before = torch.get_rng_state()
    tts.synthesize(TEXT, voice, SETTINGS, seed=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_stages_alone_equal_synthesize(tts, voice, clip):
    text_ids = tts.tokenize(TEXT)
    assert text_ids.shape == (1, len(tts.tokenizer.encode(TEXT))) and text_ids.dtype == torch.long
    codes = tts.sample_codes(text_ids, voice, SETTINGS, seed=7)
    assert codes.shape == (SETTINGS.num_autoregressive_samples, SETTINGS.max_mel_tokens) and codes.dtype == torch.long
    scores = tts.rerank(text_ids, codes)
    assert scores.shape == (SETTINGS.num_autoregressive_samples,) and torch.isfinite(scores).all()
    best = codes[scores.argmax()][None]
    latents = tts.code_latents(text_ids, best, voice)
    assert latents.shape[0] == 1 and latents.shape[2] == D_AR
    assert torch.equal(best[0, : latents.shape[1]], clip.codes)
    mel = tts.diffuse(latents, voice, SETTINGS, seed=7)
    assert mel.shape == (1, 100, latents.shape[1] * 4 * 24000 // 22050)
    wave = tts.vocode(mel, seed=7)
    assert wave.shape == (1, 1, mel.shape[2] * 256)
    diff = (wave.reshape(-1) - clip.samples).abs().max().item()
    print("stages alone vs synthesize max|diff|:", diff)
    assert diff == 0.0


def test_voice_latents_from_clips(tts):
    generator = torch.Generator().manual_seed(0)
    clips = [0.1 * torch.randn(22050 * 3, generator=generator), 0.1 * torch.randn(22050 * 7, generator=generator)]
    voice = tts.voice_latents(clips)
    assert isinstance(voice, VoiceLatents)
    assert voice.autoregressive.shape == (1, D_AR) and voice.diffusion.shape == (1, D_DIFF)
    assert torch.isfinite(voice.autoregressive).all() and torch.isfinite(voice.diffusion).all()
    again = tts.voice_latents(clips)
    assert torch.equal(again.autoregressive, voice.autoregressive) and torch.equal(again.diffusion, voice.diffusion)
    with pytest.raises(UserError):
        tts.voice_latents([])


def test_random_voice(tts):
    a, b, c = tts.random_voice(1), tts.random_voice(1), tts.random_voice(2)
    assert a.autoregressive.shape == (1, D_AR) and a.diffusion.shape == (1, D_DIFF)
    assert torch.equal(a.autoregressive, b.autoregressive) and not torch.equal(a.autoregressive, c.autoregressive)


def test_code_latents_trim_at_silence(tts, voice):
    text_ids = tts.tokenize("trim me")
    calm = 83
    codes = torch.tensor([[5] * 10 + [calm] * 14])  # 24 codes; the 9th calm in a row is index 18
    trimmed = tts.code_latents(text_ids, codes, voice)
    full = tts.code_latents(text_ids, codes, voice, trim=False)
    assert full.shape == (1, 24, D_AR) and trimmed.shape == (1, 18, D_AR)
    assert torch.equal(trimmed, full[:, :18])


def test_text_limits(tts):
    assert Tortoise.text_token_limit == 398
    with pytest.raises(UserError, match="empty"):
        tts.tokenize("  ")
    long_text = " ".join(["word"] * 400)
    assert len(tts.tokenizer.encode(long_text)) > 398
    with pytest.raises(UserError, match="too long"):
        tts.tokenize(long_text)


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert pipeline.resolve_precision("auto", cpu) == (torch.bfloat16, False)
    assert pipeline.resolve_precision("fp32", cpu) == (torch.float32, False)
    assert pipeline.resolve_precision("int8", cpu) == (torch.float32, True)
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        pipeline.resolve_precision("fp16", cpu)
    with pytest.raises(UserError):
        pipeline.resolve_device("tpu:0")


def test_bf16_runs(tiny_models_dir, voice):
    tts = Tortoise.load(tiny_models_dir, precision="bf16")
    assert tts.autoregressive.mel_embedding.weight.dtype == torch.bfloat16
    clip = tts.synthesize(TEXT, voice, SETTINGS.replace(num_autoregressive_samples=2), seed=7)
    assert clip.samples.dtype == torch.float32 and torch.isfinite(clip.samples).all()
    assert clip.samples.shape[0] == clip.codes.shape[0] * 4 * 24000 // 22050 * 256


def test_missing_weights_is_user_error(tmp_path):
    with pytest.raises(UserError, match="tutortoietts models download"):
        Tortoise.load(tmp_path)


def test_int8_autoregressive(tiny_models_dir, voice):
    from tutortoietts.engine.quant import Int8Linear

    tts = Tortoise.load(tiny_models_dir, precision="int8")
    assert any(isinstance(m, Int8Linear) for m in tts.autoregressive.modules())
    text_ids = tts.tokenize(TEXT)
    codes = tts.sample_codes(text_ids, voice, SETTINGS, seed=7)
    assert codes.shape == (SETTINGS.num_autoregressive_samples, SETTINGS.max_mel_tokens)


def test_low_vram_stages_give_the_same_audio_and_free_the_kv_cache(tiny_models_dir):
    """The low_vram stage wrapper (networks moved on and off the device around each stage)."""
    from tutortoietts.engine import Tortoise
    from tutortoietts.settings import load_preset

    tts = Tortoise.load(tiny_models_dir, device="cpu", precision="fp32")
    settings = load_preset("ultra_fast", num_autoregressive_samples=2, max_mel_tokens=16, diffusion_iterations=3)
    voice = tts.random_voice(0)
    plain = tts.synthesize("Low memory, same sound.", voice, settings, seed=5)
    tts.low_vram = True  # on the CPU the moves are no-ops, but every stage runs through the wrapper
    wrapped = tts.synthesize("Low memory, same sound.", voice, settings, seed=5)
    assert torch.equal(plain.samples, wrapped.samples)
    assert all(block.attn.kv_cache is None for block in tts.autoregressive.gpt.h)
    assert Tortoise.load(tiny_models_dir, device="cpu", precision="fp32", low_vram=True).low_vram is False  # CPU: nothing to offload
