"""Network sizes: the official Tortoise configuration and a tiny one for tests.

A configuration maps each checkpoint's file stem to the keyword arguments of the
reference's constructor (UnifiedVoice, CLVP, DiffusionTts, UnivNetGenerator,
RandomLatentConverter). Our modules take exactly those keywords, so a
`tortoise-config.json` written for the reference describes our models too.
"""

from __future__ import annotations

import copy

from tutortoietts.engine.limits import MAX_MEL_TOKENS, MAX_TEXT_TOKENS

# File stem -> constructor keywords, as tortoise-tts 3.0.0's api.py builds them.
FULL: dict[str, dict] = {
    "autoregressive": dict(
        max_mel_tokens=MAX_MEL_TOKENS, max_text_tokens=MAX_TEXT_TOKENS, max_conditioning_inputs=2, layers=30,
        model_dim=1024, heads=16, number_text_tokens=255, start_text_token=255,
        checkpointing=False, train_solo_embeddings=False,
    ),
    "clvp2": dict(
        dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
        text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20,
        speech_heads=12, speech_seq_len=430, use_xformers=True,
    ),
    "diffusion_decoder": dict(
        model_channels=1024, num_layers=10, in_channels=100, out_channels=200,
        in_latent_channels=1024, in_tokens=8193, dropout=0, use_fp16=False, num_heads=16,
        layer_drop=0, unconditioned_percentage=0,
    ),
    "vocoder": dict(),  # UnivNetGenerator's defaults are the official size
    "rlg_auto": dict(channels=1024),  # = autoregressive model_dim
    "rlg_diffuser": dict(channels=2048),  # = 2 x diffusion model_channels
    # Optional (OPTIONAL_STEMS): the HiFi decoder, as tortoise-tts 3.0.0's api_fast.py builds it.
    "hifidecoder": dict(
        in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512,
        upsample_factors=[8, 8, 2, 2], cond_channels=1024,  # in and cond = autoregressive model_dim
    ),
}

# Same structure, every width and depth shrunk so a whole synthesis runs in seconds on a CPU.
# Token limits stay official so chunking and length handling behave as with real weights.
TINY: dict[str, dict] = {
    "autoregressive": dict(
        max_mel_tokens=MAX_MEL_TOKENS, max_text_tokens=MAX_TEXT_TOKENS, max_conditioning_inputs=2, layers=2,
        model_dim=64, heads=4, number_text_tokens=255, start_text_token=255,
        checkpointing=False, train_solo_embeddings=False,
    ),
    "clvp2": dict(
        dim_text=64, dim_speech=64, dim_latent=64, num_text_tokens=256, text_enc_depth=2,
        text_seq_len=350, text_heads=4, num_speech_tokens=8192, speech_enc_depth=2,
        speech_heads=4, speech_seq_len=430, use_xformers=True,
    ),
    "diffusion_decoder": dict(
        model_channels=64, num_layers=2, in_channels=100, out_channels=200,
        in_latent_channels=64, in_tokens=8193, dropout=0, use_fp16=False, num_heads=4,
        layer_drop=0, unconditioned_percentage=0,
    ),
    "vocoder": dict(noise_dim=16, channel_size=8),
    "rlg_auto": dict(channels=64),
    "rlg_diffuser": dict(channels=128),
    "hifidecoder": dict(
        in_channels=64, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=32,
        upsample_factors=[8, 8, 2, 2], cond_channels=64,  # upsampling must still make 256 samples per frame
    ),
}

NAMED = {"full": FULL, "tiny": TINY}
# Networks loaded only when asked for (the fast decoder): the diffusion path never needs their files.
OPTIONAL_STEMS = ("hifidecoder",)
STEMS = tuple(stem for stem in FULL if stem not in OPTIONAL_STEMS)  # the six every synthesis needs


def resolve(overrides: dict | None = None) -> dict[str, dict]:
    """The official configuration with a tortoise-config.json's per-file keywords laid over it."""
    config = copy.deepcopy(FULL)
    for stem, kwargs in (overrides or {}).items():
        if stem not in config:
            raise ValueError(f"unknown network {stem!r} in tortoise-config.json (expected one of {', '.join(STEMS + OPTIONAL_STEMS)})")
        config[stem].update(kwargs)
    return config
