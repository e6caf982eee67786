"""Batched decoding across chunks: the same numbers as alone, codes that ignore their neighbours, local failures."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from tutortoietts.engine.batching import (
    MIN_SLOTS,
    DecodeStep,
    cache_length,
    plan_slots,
    row_uniforms,
    sample_rows,
    slot_bytes,
)
from tutortoietts.engine.pipeline import ARResult, Tortoise
from tutortoietts.errors import UserError
from tutortoietts.settings import load_preset

TEXTS = ["The keeper lit the lamp at dusk.", "Fog rolled in over the bay, thick and grey.", "He counted every step."]


@pytest.fixture(scope="module")
def engines(tiny_models_dir):
    return {precision: Tortoise.load(tiny_models_dir, "cpu", precision) for precision in ("fp32", "bf16")}


def sample_batch(tts, items, settings, slots):
    """autoregressive_batch to completion: {key: ARResult or exception}."""
    voice = tts.random_voice(3)
    out = {}
    for group in tts.autoregressive_batch(items, voice, settings, slots=slots):
        for key, outcome in group:
            assert key not in out
            out[key] = outcome
    return out


# ---------------------------------------------------------------- random numbers


def test_counter_based_uniforms_are_uniform_and_each_rows_own():
    keys = torch.tensor([7, 7, 2**62 + 5, 123456789])
    steps = torch.tensor([0, 0, 0, 3])
    first = row_uniforms(keys, steps)
    assert first[0] == first[1] and first[0] != first[2]  # same (key, step), same number; another key, another
    assert torch.equal(row_uniforms(keys[2:3], steps[2:3]), first[2:3])  # one row alone draws what it draws in a batch
    many = row_uniforms(torch.full((40000,), 99), torch.arange(40000))
    counts = torch.histc(many.float(), bins=10, min=0, max=1)
    print(f"[batching] uniforms: mean {many.mean():.4f}, decile counts {counts.tolist()}")
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.01
    assert (counts - 4000).abs().max() < 300
    ids = sample_rows(torch.tensor([[0.2, 0.0, 0.8]]).expand(40000, 3), many)
    frequency = torch.bincount(ids, minlength=3) / 40000
    print(f"[batching] inverse-CDF frequencies {frequency.tolist()}")
    assert frequency[1] == 0 and abs(frequency[0] - 0.2) < 0.01


# ---------------------------------------------------------------- the static step


def load_chunks(model, cond, slots, texts):
    """Prefill each text alone into its slot: {slot: prefix length P}; first-step logits by slot."""
    from tutortoietts.engine.tokenizer import Tokenizer

    tokenizer = Tokenizer()
    lengths, first = {}, {}
    for slot, text in zip(slots, texts):
        prefix = model.embed_prefix(cond, torch.tensor([tokenizer.encode(text)]))
        logits, kv = model.prefill_capture(prefix)
        model.load_slot(slot, kv)
        lengths[slot], first[slot] = prefix.shape[1], logits
    return lengths, first


@torch.inference_mode()
def test_static_step_and_graph_path_equal_the_eager_step(engines):
    """The step a CUDA graph would capture (whole cache, fixed shapes) equals the windowed eager step,
    and torch.compile traces it whole (fullgraph: no graph breaks) to the same numbers."""
    tts = engines["fp32"]
    model = tts.autoregressive
    length = cache_length(model, 40)
    model.setup_caches(MIN_SLOTS, length)
    cond = tts.random_voice(1).autoregressive
    slots = [0, 5, 9]
    prefix, _ = load_chunks(model, cond, slots, TEXTS)
    generator = torch.Generator().manual_seed(0)
    compiled = torch.compile(model.decode_slots, backend="eager", fullgraph=True, dynamic=False)
    tokens = torch.full((MIN_SLOTS, 1), model.stop_mel_token)
    positions = torch.zeros(MIN_SLOTS, dtype=torch.long)
    mel_positions = torch.zeros(MIN_SLOTS, dtype=torch.long)
    worst = {"static": 0.0, "compiled": 0.0}
    eager_step = DecodeStep(model, length)
    for step in range(6):
        for slot in slots:
            tokens[slot, 0] = int(torch.randint(0, 8192, (1,), generator=generator))
            positions[slot] = prefix[slot] + 1 + step
            mel_positions[slot] = step + 2
        window = eager_step.window(int(positions.max()))
        assert window < length and window % 64 == 0
        # Each call writes the same keys and values at the same places, so all three see one cache.
        eager = model.decode_slots(tokens, positions, mel_positions, window)[slots]
        static = model.decode_slots(tokens, positions, mel_positions, length)[slots]
        graph = compiled(tokens, positions, mel_positions, length)[slots]
        scale = eager.abs().max()
        worst["static"] = max(worst["static"], ((static - eager).abs().max() / scale).item())
        worst["compiled"] = max(worst["compiled"], ((graph - eager).abs().max() / scale).item())
    print(f"[batching] static vs eager step, relative: {worst}")
    assert worst["static"] <= 1e-6 and worst["compiled"] <= 1e-6


@torch.inference_mode()
def test_teacher_forced_logits_in_a_batch_equal_the_chunk_alone(engines):
    """fp32: every chunk's logits, fed known codes beside two other chunks in one static cache, equal
    its own full forward (the serial sampler's arithmetic) to 1e-5 relative."""
    tts = engines["fp32"]
    model = tts.autoregressive
    count = 12
    model.setup_caches(MIN_SLOTS, cache_length(model, 40))
    cond = tts.random_voice(2).autoregressive
    slots = [3, 0, 11]
    prefix, first = load_chunks(model, cond, slots, TEXTS)
    generator = torch.Generator().manual_seed(1)
    codes = {slot: torch.randint(0, 8192, (1, count), generator=generator) for slot in slots}
    batched = {slot: [first[slot][0]] for slot in slots}
    tokens = torch.full((MIN_SLOTS, 1), model.stop_mel_token)
    positions = torch.zeros(MIN_SLOTS, dtype=torch.long)
    mel_positions = torch.zeros(MIN_SLOTS, dtype=torch.long)
    for step in range(count - 1):
        for slot in slots:
            tokens[slot, 0] = codes[slot][0, step]
            positions[slot] = prefix[slot] + 1 + step
            mel_positions[slot] = step + 2
        logits = DecodeStep(model, 0).model.decode_slots(tokens, positions, mel_positions, cache_length(model, 40))
        for slot in slots:
            batched[slot].append(logits[slot])
    from tutortoietts.engine.tokenizer import Tokenizer

    for slot, text in zip(slots, TEXTS):
        text_ids = torch.tensor([Tokenizer().encode(text)])
        alone = model.mel_head(model.latents(cond, text_ids, codes[slot], sampling_positions=True)).float()[0]  # (T, V)
        ours = torch.stack(batched[slot])
        relative = ((ours - alone).abs().max() / alone.abs().max()).item()
        print(f"[batching] slot {slot} ({text[:20]}...): teacher-forced logits, relative difference {relative:.2e}")
        assert relative <= 1e-5


# ---------------------------------------------------------------- determinism and failures


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_chunks_codes_do_not_depend_on_its_batch(engines, precision):
    """The same chunk alone, beside other chunks, in another slot, at another slot count: the same bits."""
    tts = engines[precision]
    settings = load_preset("ultra_fast_v2", precision=precision, max_mel_tokens=24, num_autoregressive_samples=6)
    together = sample_batch(tts, [(i, text, 10 + i) for i, text in enumerate(TEXTS)], settings, slots=16)
    alone = sample_batch(tts, [(1, TEXTS[1], 11)], settings, slots=16)
    reordered = sample_batch(tts, [(2, TEXTS[2], 12), (0, TEXTS[0], 10), (1, TEXTS[1], 11)], settings, slots=24)
    for key in (0, 1, 2):
        result = together[key]
        assert isinstance(result, ARResult) and result.codes.shape == (6, 24)
        assert len({tuple(row) for row in result.codes.tolist()}) == 6  # candidates draw their own streams
        other = reordered[key]
        assert torch.equal(result.codes, other.codes) and torch.equal(result.scores, other.scores)
        assert torch.equal(result.latents, other.latents)
    assert torch.equal(together[1].codes, alone[1].codes) and torch.equal(together[1].latents, alone[1].latents)
    # A different seed is a different chunk.
    assert not torch.equal(sample_batch(tts, [(1, TEXTS[1], 99)], settings, slots=16)[1].codes, alone[1].codes)


def test_a_chunk_that_fails_fails_alone(engines, monkeypatch):
    """Text the engine refuses and a NaN inside the batch fail their own chunks; the others compute what
    they compute without them, including a chunk that takes the failed chunk's slots afterwards."""
    tts = engines["fp32"]
    settings = load_preset("ultra_fast_v2", precision="fp32", max_mel_tokens=16, num_autoregressive_samples=8)
    model = tts.autoregressive
    poison = "Poison this chunk's prefix, please."
    real = model.embed_prefix

    def embed_prefix(cond, text_ids):
        prefix = real(cond, text_ids)
        from tutortoietts.engine.tokenizer import Tokenizer

        if text_ids[0].tolist() == Tokenizer().encode(poison):
            prefix = prefix * float("nan")
        return prefix

    monkeypatch.setattr(model, "embed_prefix", embed_prefix)
    items = [("nan", poison, 1), ("a", TEXTS[0], 2), ("empty", "\U0001F600 \U0001F600", 3), ("b", TEXTS[1], 4),
             ("c", TEXTS[2], 5), ("long", "word " * 500, 6)]
    results = sample_batch(tts, items, settings, slots=16)  # two chunks at a time: b and c reuse nan's slots
    print("[batching] failures:", {k: f"{type(v).__name__}: {v}"[:90] for k, v in results.items() if isinstance(v, Exception)})
    assert isinstance(results["nan"], FloatingPointError)
    assert isinstance(results["empty"], UserError) and isinstance(results["long"], UserError)
    clean = sample_batch(tts, [("a", TEXTS[0], 2), ("b", TEXTS[1], 4), ("c", TEXTS[2], 5)], settings, slots=16)
    for key in "abc":
        assert torch.equal(results[key].codes, clean[key].codes) and torch.equal(results[key].latents, clean[key].latents)


def test_audio_batch_equals_each_chunk_alone(engines):
    """fp32: chunks diffused and vocoded as one batch equal each alone (same seed-drawn noise) to 1e-5."""
    tts = engines["fp32"]
    settings = load_preset("ultra_fast_v2", precision="fp32", diffusion_iterations=4)
    voice = tts.random_voice(4)
    generator = torch.Generator().manual_seed(3)
    ars = [ARResult(codes=torch.zeros(1, 10, dtype=torch.long), scores=torch.zeros(1), chosen=0,
                    latents=torch.randn(1, 10, tts.autoregressive.model_dim, generator=generator)) for _ in range(3)]
    together = tts.audio_batch(ars, voice, settings, [5, 6, 7])
    for ar, seed, clip in zip(ars, [5, 6, 7], together):
        (alone,) = tts.audio_batch([ar], voice, settings, [seed])
        mel = ((clip.mel - alone.mel).abs().max() / alone.mel.abs().max()).item()
        wave = ((clip.samples - alone.samples).abs().max() / alone.samples.abs().max()).item()
        print(f"[batching] audio_batch vs alone, seed {seed}: mel {mel:.2e}, wave {wave:.2e} (relative)")
        assert mel <= 1e-5 and wave <= 1e-4  # the vocoder amplifies rounding (random UnivNet weights)
    with pytest.raises(ValueError):
        tts.audio_batch([ars[0], ARResult(ars[1].codes, ars[1].scores, 0, ars[1].latents[:, :8])], voice, settings, [1, 2])


# ---------------------------------------------------------------- sizing


def test_slots_auto_and_explicit(engines):
    model = engines["bf16"].autoregressive
    per_slot = slot_bytes(model, 500)
    cpu = torch.device("cpu")
    plenty = 10_000 * per_slot
    assert plan_slots(model, 8, 500, None, cpu, memory=plenty) == 32  # 4 chunks of 8 on a CPU
    assert plan_slots(model, 2, 500, None, cpu, memory=plenty) == 32
    assert plan_slots(model, 256, 500, None, cpu, memory=plenty) == 32  # one chunk's candidates in waves
    assert plan_slots(model, 8, 500, None, torch.device("cuda"), memory=plenty) == 128
    assert plan_slots(model, 8, 500, None, cpu, memory=40 * per_slot) == 16  # what half the memory holds, whole chunks
    assert plan_slots(model, 8, 500, None, cpu, memory=per_slot) == MIN_SLOTS
    assert plan_slots(model, 8, 500, 3, cpu, memory=plenty) == 24
    assert plan_slots(model, 2, 500, 1, cpu, memory=plenty) == MIN_SLOTS
    with pytest.raises(UserError, match="--batch-chunks 500 needs .* use --batch-chunks 2 or auto"):
        plan_slots(model, 8, 500, 500, cpu, memory=40 * per_slot)


# ---------------------------------------------------------------- through the render loop


BOOK = "# A Book\n\n" + "\n\n".join(f"Line {n} of the book: the keeper climbs the stairs." for n in range(1, 7)) + "\n"


def chunk_files(job_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((job_dir / "chunks").glob("*.wav"))}


def test_generate_batched_resumes_byte_identical(models, workspace, tmp_path, monkeypatch):
    """The batched renderer (the default) through render_book: any batch size, and a resume with a different
    set of pending chunks, give the same chunk files; --batch-chunks 1 is the serial decoder, with its own keys."""
    from tutortoietts import render
    from tutortoietts.render import RenderRequest, plan_render, render_book

    monkeypatch.setenv("TUTORTOIETTS_VOICES", workspace["env"]["TUTORTOIETTS_VOICES"])
    book = tmp_path / "book.md"
    book.write_text(BOOK)
    base = dict(book=book, voice=str(workspace["voice"]), preset="ultra_fast_v2", precision="fp32", fmt="wav",
                models_dir=models, device="cpu", seed=5,
                overrides={"num_autoregressive_samples": 2, "diffusion_iterations": 3})
    made = []
    real = render.make_renderer

    def make_renderer(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(render, "make_renderer", make_renderer)
    first = render_book(RenderRequest(**base, out_dir=tmp_path / "a", cache_dir=tmp_path / "cache-a"))
    assert type(made[-1]).__name__ == "BatchedRenderer" and made[-1].slots == 32
    reference = chunk_files(tmp_path / "a")
    assert first.total == len(reference) >= 6

    render_book(RenderRequest(**base, out_dir=tmp_path / "b", cache_dir=tmp_path / "cache-b", batch_chunks=2))
    assert made[-1].slots == MIN_SLOTS and chunk_files(tmp_path / "b") == reference

    # A resumed job: half its chunks done, the other half rendered now, beside different neighbours.
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    for name in list(reference)[::2]:
        (tmp_path / "c" / "chunks" / name).unlink()
    resumed = render_book(RenderRequest(**base, out_dir=tmp_path / "c", cache_dir=tmp_path / "cache-c"))
    assert resumed.rendered == len(list(reference)[::2])
    assert chunk_files(tmp_path / "c") == reference

    serial = plan_render(RenderRequest(**base, out_dir=tmp_path / "d", batch_chunks=1))
    batched = plan_render(RenderRequest(**base, out_dir=tmp_path / "d"))
    assert not set(serial.ar_keys.values()) & set(batched.ar_keys.values())
    with pytest.raises(UserError, match="--batch-chunks must be a whole number or auto"):
        plan_render(RenderRequest(**base, out_dir=tmp_path / "d", batch_chunks="many"))
    with pytest.raises(UserError, match="at least 1"):
        plan_render(RenderRequest(**base, out_dir=tmp_path / "d", batch_chunks=0))
