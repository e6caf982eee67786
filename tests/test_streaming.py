"""The hifi decoder path on tiny random weights: the stage sequence with decoder "hifi", streaming, seamless joins."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.cli_support import ROOT
from tests.conftest import report
from tutortoietts.engine import Tortoise, configs
from tutortoietts.engine.hifigan import FRAME_HOP, HifiganGenerator, frame_count
from tutortoietts.engine.streaming import WindowedDecoder, joined_length
from tutortoietts.errors import UserError
from tutortoietts.settings import load_preset

# Random weights never emit the stop code: max_mel_tokens is the code count (the forced length).
CODES = 90
SETTINGS = load_preset("realtime", precision="fp32", max_mel_tokens=CODES)
TEXT = "A short sentence, spoken in pieces."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tts(tiny_models_dir, one_thread):
    return Tortoise.load(tiny_models_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def voice(tts):
    return tts.random_voice(seed=3)


@pytest.fixture(scope="module")
def whole(tts, voice):
    """The stage sequence with the hifi decoder: autoregressive_stage, then audio_stage."""
    ar = tts.autoregressive_stage(TEXT, voice, SETTINGS, seed=5)
    return ar, tts.audio_stage(ar, voice, SETTINGS, seed=5)


@pytest.fixture(scope="module")
def streamed(tts, voice):
    stream = tts.stream(TEXT, voice, SETTINGS, seed=5)
    pieces = list(stream)
    return stream, pieces


# --- the stage sequence ---------------------------------------------------------------------------


def test_hifi_stage_sequence(tts, voice, whole):
    ar, clip = whole
    assert ar.codes.shape == (1, CODES) and ar.chosen == 0
    assert torch.isnan(ar.scores).all()  # one candidate: CLVP not run
    assert int(ar.lengths[0]) == CODES and not bool(ar.stopped[0])  # ran to max_mel_tokens
    assert set(clip.timings) == {"autoregressive", "rerank", "latents", "hifi"}
    assert clip.samples.shape == (frame_count(CODES) * FRAME_HOP,) and clip.samples.dtype == torch.float32
    assert clip.mel is None and clip.codes.shape == (CODES,)
    assert 0.01 < clip.samples.abs().max() < 1.0
    # The latents step computed the hifi decoder's latents only; audio_stage decodes them.
    assert ar.latents is None and ar.hifi_latents.shape == (1, CODES, configs.TINY["autoregressive"]["model_dim"])
    assert torch.equal(tts.hifi_latents(ar, voice), ar.hifi_latents)
    assert torch.equal(tts.hifi_decode(ar.hifi_latents, voice).reshape(-1), clip.samples)
    print("timings", {k: round(v, 3) for k, v in clip.timings.items()})


def test_candidates_are_reranked_and_the_best_spoken(tts, voice):
    settings = load_preset("fast_hifi", precision="fp32", max_mel_tokens=20)
    ar = tts.autoregressive_stage(TEXT, voice, settings, seed=6)
    assert ar.codes.shape[0] == settings.num_autoregressive_samples and torch.isfinite(ar.scores).all()
    assert ar.chosen == int(ar.scores.argmax())
    clip = tts.audio_stage(ar, voice, settings, seed=6)
    alone = tts.hifi_decode(tts.autoregressive.latents(
        voice.autoregressive, ar.text_ids, ar.codes[ar.chosen : ar.chosen + 1], sampling_positions=True), voice)
    assert torch.allclose(clip.samples, alone.reshape(-1), atol=1e-6)


def test_decoders_share_the_autoregressive_result(tts, voice, whole):
    """Either decoder speaks the other's result (the AR cache is shared): the latents it lacks are
    computed from the codes, and the audio is what its own run makes."""
    ar, clip = whole
    diffusion = SETTINGS.replace(decoder="diffusion", diffusion_iterations=3, sampler="ddim")
    again = tts.autoregressive_stage(TEXT, voice, diffusion, seed=5)
    assert torch.equal(again.codes, ar.codes) and torch.equal(again.lengths, ar.lengths)
    assert again.hifi_latents is None and again.latents is not None
    from_hifi = tts.audio_stage(ar, voice, diffusion, seed=5)
    own = tts.audio_stage(again, voice, diffusion, seed=5)
    assert from_hifi.mel is not None and torch.equal(from_hifi.samples, own.samples)
    assert torch.equal(tts.audio_stage(again, voice, SETTINGS, seed=5).samples, clip.samples)


def test_missing_hifidecoder_is_one_line_only_for_hifi(tiny_models_dir, tmp_path, voice):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models_dir, folder)
    (folder / "hifidecoder.pth").unlink()
    tts = Tortoise.load(folder, device="cpu", precision="fp32")  # the six are enough to load
    diffusion = SETTINGS.replace(decoder="diffusion", diffusion_iterations=2, sampler="ddim", max_mel_tokens=8)
    assert tts.synthesize(TEXT, voice, diffusion, seed=1).samples.numel() > 0
    with pytest.raises(UserError) as caught:
        tts.synthesize(TEXT, voice, SETTINGS.replace(max_mel_tokens=8), seed=1)
    message = str(caught.value)
    print(message)
    assert message.startswith("hifidecoder.pth not found in") and "models download" in message and "\n" not in message


# --- streaming --------------------------------------------------------------------------------------


def test_stream_joined_equals_the_whole_decode(whole, streamed):
    ar, clip = whole
    stream, pieces = streamed
    sizes = [piece.numel() for piece in pieces]
    print(f"{len(pieces)} pieces of {sizes} samples; first after {stream.timings['first_piece']:.3f} s, all in {stream.timings['total']:.3f} s")
    assert len(pieces) >= 3  # the first after a few codes, then every PIECE_CODES, then the rest
    joined = torch.cat(pieces)
    assert joined.shape == clip.samples.shape == (joined_length(CODES),)
    diff, scale = report("stream joined vs whole-utterance decode", joined, clip.samples)
    assert diff <= 1e-4 * scale
    # The stream's result is the autoregressive stage's, its hifi latents those the loop reported.
    assert torch.equal(stream.result.codes, ar.codes) and torch.equal(stream.result.lengths, ar.lengths)
    assert stream.result.latents is None
    diff, scale = report("streamed hifi latents vs recomputed", stream.result.hifi_latents, ar.hifi_latents)
    assert diff <= 1e-4 * scale


def joins(pieces: list[torch.Tensor]) -> list[int]:
    ends, total = [], 0
    for piece in pieces[:-1]:
        total += piece.numel()
        ends.append(total)
    return ends


def log_spectrum(wave: torch.Tensor, centre: int, size: int = 1024) -> torch.Tensor:
    """dB magnitude spectrum of a Hann window of `size` samples centred on `centre`."""
    part = wave[centre - size // 2 : centre + size // 2]
    return 20 * torch.log10(torch.fft.rfft(part * torch.hann_window(size, periodic=False)).abs() + 1e-6)


def test_joins_are_seamless(whole, streamed):
    """At each join: the samples equal the whole decode's, and the spectrum across the join too.

    The control shows the measures can fail: the same pieces decoded without context (each
    window alone) differ at the joins by a large fraction of the signal, spectrum included.
    """
    _, clip = whole
    _, pieces = streamed
    whole_wave, joined = clip.samples, torch.cat(pieces)
    tts_scale = whole_wave.abs().max().item()
    for at in joins(pieces):
        near = slice(at - FRAME_HOP, at + FRAME_HOP)
        diff = (joined[near] - whole_wave[near]).abs().max().item()
        spectral = (log_spectrum(joined, at) - log_spectrum(whole_wave, at)).abs().max().item()
        print(f"join at sample {at}: max|diff| {diff:.2e} (scale {tts_scale:.2e}), spectrum max {spectral:.2e} dB")
        assert diff <= 1e-4 * tts_scale
        assert spectral <= 0.01


def test_a_decode_without_context_would_show_seams(tts, voice, whole, streamed):
    ar, clip = whole
    _, pieces = streamed
    latents = tts.hifi_latents(ar, voice)
    decoder = tts.hifi_decoder
    # Each piece's frames decoded from its own latents only (no context), as a naive streamer would.
    naive, start = [], 0
    for at in [*joins(pieces), clip.samples.numel()]:
        first, last = start // FRAME_HOP, at // FRAME_HOP
        naive.append(decoder.decode_frames(latents, voice.autoregressive, first, last - first, 0, CODES, context=0).reshape(-1))
        start = at
    naive = torch.cat(naive)
    worst = max((naive[at - FRAME_HOP : at + FRAME_HOP] - clip.samples[at - FRAME_HOP : at + FRAME_HOP]).abs().max().item()
                for at in joins(pieces))
    spectral = max((log_spectrum(naive, at) - log_spectrum(clip.samples, at)).abs().max().item() for at in joins(pieces))
    print(f"without context: worst join diff {worst:.3f}, spectrum {spectral:.1f} dB")
    assert worst > 0.01 * clip.samples.abs().max().item() and spectral > 1.0


def test_windowed_decoder_alone_any_piece_size():
    torch.manual_seed(0)
    decoder = HifiganGenerator(**configs.TINY["hifidecoder"]).eval()
    latents, cond = torch.randn(47, 64), torch.randn(1, 64)
    whole = decoder.inference(latents[None], cond).reshape(-1)
    for first, every in [(3, 1), (8, 5), (20, 100)]:
        stream = WindowedDecoder(decoder, cond, first_codes=first, piece_codes=every)
        pieces = [p for p in (stream.push(latent) for latent in latents) if p is not None] + [stream.finish()]
        joined = torch.cat(pieces)
        diff, scale = report(f"windowed decoder first={first} every={every}: {len(pieces)} pieces", joined, whole)
        assert joined.shape == whole.shape and diff <= 1e-5 * scale
    # Each frame is decoded once plus its context: the work grows linearly, not with the square.
    assert sum(p.numel() for p in pieces) == whole.numel()


def test_stream_with_several_candidates_yields_the_chosen_one(tts, voice):
    settings = load_preset("fast_hifi", precision="fp32", max_mel_tokens=16)
    stream = tts.stream(TEXT, voice, settings, seed=8)
    pieces = list(stream)
    clip = tts.synthesize(TEXT, voice, settings, seed=8)
    assert len(pieces) == 1 and torch.equal(pieces[0], clip.samples)
    assert stream.result.codes.shape[0] == settings.num_autoregressive_samples


def test_stream_refuses_the_diffusion_decoder_and_stops_when_closed(tts, voice):
    with pytest.raises(UserError, match="streaming needs the hifi decoder"):
        tts.stream(TEXT, voice, load_preset("ultra_fast_v2"), seed=1)
    stream = iter(tts.stream(TEXT, voice, SETTINGS.replace(max_mel_tokens=400), seed=9))
    first = next(stream)
    assert first.numel() > 0
    stream.close()  # the worker stops at its next step and is joined
    import threading

    assert not any(t.name == "tutortoietts-stream" and t.is_alive() for t in threading.enumerate())


def test_profile_runs_the_hifi_sequence(tiny_models_dir, tmp_path):
    """`profile --preset realtime`: the stage table covers the hifi stages and adds up to the total."""
    from tutortoietts.devtools.profiling import ProfileOptions, run_profile

    report = run_profile(ProfileOptions(preset="realtime", models_dir=tiny_models_dir, codes=30, precision="fp32",
                                        trace_path=tmp_path / "trace.json"))
    parts = {row["part"]: row["seconds"] for row in report["breakdown"]}
    print({part: round(seconds, 3) for part, seconds in parts.items()})
    assert set(report["stage_seconds"]) == {"autoregressive", "rerank", "latents", "hifi"}
    assert parts["hifi: decoder"] > 0 and parts["latents"] > 0  # the hifi latents, in the latents stage
    assert "diffusion: network" not in parts and "vocoder" not in parts
    assert sum(parts.values()) == pytest.approx(report["total_seconds"], rel=1e-6)
    assert report["audio_seconds"] == pytest.approx(joined_length(30) / 24000)
    assert (tmp_path / "trace.json").is_file()


def test_bench_has_a_hifi_side(tiny_models_dir, tmp_path):
    """`bench --side "ours realtime (hifi)"`: the same forced code length, the hifi stage split, RTF."""
    import json
    import os
    import subprocess
    import sys

    from tutortoietts.engine.timing import HIFI_STAGES

    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "tutortoietts.cli", "bench", "--quick", "--models-dir", str(tiny_models_dir),
                           "--side", "ours realtime (hifi)", "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    print(done.stdout[-3000:], done.stderr[-2000:])
    assert done.returncode == 0, done.stderr
    assert "hifi decoder" in done.stdout
    side = json.loads(out.read_text())["sides"]["ours realtime (hifi)"]
    assert tuple(side["stage_seconds"]) == HIFI_STAGES and all(s > 0 for k, s in side["stage_seconds"].items() if k != "rerank")
    assert side["settings"]["decoder"] == "hifi" and side["ar_steps"] == 16  # the forced code length (--quick)
    assert side["total_seconds"] == pytest.approx(sum(side["stage_seconds"].values()))
    assert side["real_time_factor"] == pytest.approx(side["total_seconds"] / side["audio_seconds"])
    assert side["audio_seconds"] == pytest.approx(joined_length(16) / 24000)


def test_audio_batch_with_the_hifi_decoder_is_audio_stage_per_chunk(tts, voice, whole):
    """The batched renderer's audio_batch (bench's batch_audio) dispatches on the decoder too."""
    ar, clip = whole
    clips = tts.audio_batch([ar, ar], voice, SETTINGS, [5, 5])
    assert len(clips) == 2 and all(torch.equal(c.samples, clip.samples) for c in clips)
