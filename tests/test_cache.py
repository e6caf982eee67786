"""Cache keys reuse exactly what is still valid; the store round-trips values and counts hits."""

from __future__ import annotations

import torch

from tutortoietts.cache import Cache, ar_key, audio_key, voice_key
from tutortoietts.engine.pipeline import ARResult
from tutortoietts.settings import load_preset


BASE = load_preset("ultra_fast")


def keys(text="Hello there.", voice="v1", settings=BASE, seed=7, weights="w1"):
    ar = ar_key(text, voice, settings, seed, weights)
    return ar, audio_key(ar, settings)


def test_diffusion_change_keeps_ar_key():
    base_ar, base_audio = keys()
    for change in ({"diffusion_iterations": 50}, {"sampler": "dpmpp2m"}, {"cond_free_k": 1.5}, {"diffusion_temperature": 0.9}):
        ar, audio = keys(settings=BASE.replace(**change))
        assert ar == base_ar, change
        assert audio != base_audio, change


def test_upstream_changes_change_everything():
    base_ar, base_audio = keys()
    variants = [
        keys(text="Hello there!"),
        keys(voice="v2"),
        keys(seed=8),
        keys(weights="w2"),
        *(keys(settings=BASE.replace(**{f: v}))
          for f, v in [("temperature", 0.5), ("top_p", 0.9), ("num_autoregressive_samples", 4),
                       ("max_mel_tokens", 100), ("repetition_penalty", 1.5), ("length_penalty", 2.0), ("precision", "bf16")]),
    ]
    for ar, audio in variants:
        assert ar != base_ar and audio != base_audio
    assert len({ar for ar, _ in variants}) == len(variants)
    # The batch split changes the sampled codes, so it is part of the key; the default (0) and
    # its resolved value name the same batches.
    assert keys(settings=BASE.replace(autoregressive_batch_size=1))[0] != base_ar
    resolved = BASE.batch_size()
    assert keys(settings=BASE.replace(autoregressive_batch_size=resolved)) == (base_ar, base_audio)
    # Whitespace is not speech.
    assert keys(text="  Hello   there. ")[0] == base_ar
    assert voice_key("v1", "w1") != voice_key("v1", "w2")


def test_store_round_trip_and_counters(tmp_path):
    store = Cache(tmp_path / "c")
    ar, audio = keys()
    assert store.get_audio(audio) is None and store.get_ar(ar) is None
    samples = torch.randn(48000)
    store.put_audio(audio, samples, 24000, "w1")
    result = ARResult(codes=torch.randint(0, 8193, (2, 30)), scores=torch.randn(2), chosen=1, latents=torch.randn(1, 30, 16))
    store.put_ar(ar, result, "w1")
    store.put_voice_latents("vk", torch.randn(1, 16), torch.randn(1, 32), "w2")
    got, rate = store.get_audio(audio)
    assert rate == 24000 and torch.equal(got, samples)
    back = store.get_ar(ar)
    assert back.chosen == 1 and torch.equal(back.codes, result.codes) and torch.equal(back.latents, result.latents)
    assert store.get_voice_latents("vk")["autoregressive"].shape == (1, 16)
    store.close()
    reopened = Cache(tmp_path / "c")  # counters persist across processes
    stats = reopened.stats()
    print(stats)
    assert stats["namespaces"]["audio"] == {"entries": 1, "hits": 1, "misses": 1, "damaged": 0, "hit_rate": 0.5}
    assert stats["namespaces"]["ar"]["hits"] == 1 and stats["namespaces"]["ar"]["misses"] == 1
    assert reopened.clear(weights_fp="w1") == 2  # tags: one weights version out in one call
    assert reopened.stats()["namespaces"]["voice"]["entries"] == 1
    reopened.clear()
    assert reopened.stats()["namespaces"]["voice"]["entries"] == 0


def test_size_limit_evicts(tmp_path):
    store = Cache(tmp_path / "small", size_limit=2_000_000)
    for i in range(10):
        store.put_audio(f"{i:064x}", torch.zeros(100_000) + i, 24000, "w")  # ~400 kB each
    store._store.cull()
    stats = store.stats()
    print(stats["bytes"], stats["namespaces"]["audio"]["entries"])
    assert stats["bytes"] <= 2_000_000 and stats["namespaces"]["audio"]["entries"] < 10


def _value_files(directory):
    return [p for p in (directory / "store").rglob("*.val")]


def test_damaged_entries_are_misses_and_are_dropped(tmp_path):
    samples = torch.linspace(-1, 1, 48000)  # 192 KB: stored in its own file, as chunk audio is
    with Cache(tmp_path) as cache:
        cache.put_audio("k1", samples, 24000, "w")
        cache.put_audio("k2", samples * 0.5, 24000, "w")
        files = sorted(_value_files(tmp_path))
        assert len(files) == 2
        by_key = {key: cache.get_audio(key)[0] for key in ("k1", "k2")}
        raw = files[0].read_bytes()
        files[0].write_bytes(raw[: len(raw) // 2])  # truncated
        flipped = bytearray(files[1].read_bytes())
        flipped[len(flipped) // 2] ^= 0x10  # one bit inside the samples: torch.load would read it as valid
        files[1].write_bytes(bytes(flipped))
        assert cache.get_audio("k1") is None and cache.get_audio("k2") is None
        assert not cache.contains("audio", "k1") and not cache.contains("audio", "k2")  # dropped: the caller refills them
        assert cache.stats()["namespaces"]["audio"]["damaged"] == 2
        cache.put_audio("k1", samples, 24000, "w")
        assert torch.equal(cache.get_audio("k1")[0], by_key["k1"])


def test_damaged_index_is_set_aside_and_started_afresh(tmp_path):
    with Cache(tmp_path) as cache:
        cache.put_audio("k1", torch.zeros(10), 24000, "w")
    index = tmp_path / "store" / "cache.db"
    index.write_bytes(b"\0garbage" * 1000)
    with Cache(tmp_path) as cache:
        assert len(cache.notices) == 1 and "damaged" in cache.notices[0]
        assert cache.get_audio("k1") is None
        cache.put_audio("k1", torch.ones(10), 24000, "w")
        assert torch.equal(cache.get_audio("k1")[0], torch.ones(10))
    assert list(tmp_path.glob("store.damaged-*"))


def test_a_failing_write_is_a_notice_not_an_error(tmp_path, monkeypatch):
    import errno

    with Cache(tmp_path) as cache:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(cache._store, "set", full)
        cache.put_audio("k1", torch.zeros(10), 24000, "w")
        cache.put_audio("k2", torch.zeros(10), 24000, "w")
        assert len(cache.notices) == 1 and "No space left" in cache.notices[0]
        assert cache.get_audio("k1") is None
