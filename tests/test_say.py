"""`tutortoietts say` end to end on tiny random weights: wav, raw PCM from stdin, caches shared with generate, errors."""

from __future__ import annotations

import shutil
from pathlib import Path
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile

from tests.cli_support import ROOT, cli_in_process, one_error_line

TEXT = "Hello there. This is a streamed sentence, spoken in pieces."
BASE = ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def env(workspace, monkeypatch):
    for key in ("TUTORTOIETTS_CACHE", "TUTORTOIETTS_VOICES"):
        monkeypatch.setenv(key, workspace["env"][key])
    return workspace["env"]


def run(*args, monkeypatch, capsys):
    return cli_in_process("say", *args, monkeypatch=monkeypatch, capsys=capsys)


def expected_audio(models, voice_path, text, preset="realtime", **overrides):
    """What say must write: each chunk as the engine's stage sequence makes it (generate's seeds),
    a sentence pause between chunks."""
    import torch

    from tutortoietts.chunking import ChunkLimits, chunk_text
    from tutortoietts.commands.say import SAMPLE_RATE, SENTENCE_PAUSE
    from tutortoietts.engine import Tortoise
    from tutortoietts.jobs import chunk_seed
    from tutortoietts.settings import load_preset
    from tutortoietts.voices import find_voice, load_voice_clips

    settings = load_preset(preset, precision="fp32", **overrides)
    tts = Tortoise.load(models, device="cpu", precision="fp32")
    voice = tts.voice_latents(load_voice_clips(find_voice(str(voice_path))))
    parts = []
    for index, chunk in enumerate(chunk_text(text, ChunkLimits(max_mel_tokens=settings.max_mel_tokens))):
        if index:
            parts.append(torch.zeros(int(SENTENCE_PAUSE * SAMPLE_RATE)))
        parts.append(tts.synthesize(chunk, voice, settings, seed=chunk_seed(0, chunk)).samples)
    return torch.cat(parts).numpy()


def test_say_to_wav_streams_what_the_stage_sequence_makes(env, workspace, models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hello.wav"
    result = run(TEXT, "--voice", workspace["voice"], "--out", out, "--models-dir", models, *BASE,
                 monkeypatch=monkeypatch, capsys=capsys)
    print(result.stderr)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("first audio after ") and " RTF " in line and " chunk" in line
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == 24000 and samples.ndim == 1
    expected = expected_audio(models, workspace["voice"], TEXT)
    assert samples.shape == expected.shape
    # 16-bit output: equal to the quantisation step (plus the streamed joins' float rounding).
    assert np.abs(samples - np.clip(expected, -1, 1)).max() <= 1.5 / 32767
    assert not list(tmp_path.glob(".*partial"))

    again = run(TEXT, "--voice", workspace["voice"], "--out", tmp_path / "again.wav", "--models-dir", models, *BASE,
                monkeypatch=monkeypatch, capsys=capsys)
    assert again.returncode == 0 and "from the audio cache" in again.stderr and "ar cache" not in again.stderr
    assert (tmp_path / "again.wav").read_bytes() == out.read_bytes()


def test_stdin_to_raw_pcm_in_a_real_process(env, workspace, models, tmp_path):
    """Paragraphs from stdin, raw s16le on stdout, the summary (only) on stderr."""
    stdin = "First paragraph, one sentence.\n\nSecond paragraph. It has two sentences.\n"
    result = subprocess.run([sys.executable, "-m", "tutortoietts.cli", "say", "--voice", str(workspace["voice"]),
                             "--out", "-", "--models-dir", str(models), *BASE], input=stdin.encode(),
                            capture_output=True, env=env, cwd=ROOT, timeout=300)
    stderr = result.stderr.decode()
    print(stderr)
    assert result.returncode == 0, stderr
    assert stderr.count("\n") == 1 and "RTF" in stderr
    pcm = np.frombuffer(result.stdout, dtype="<i2")
    from tutortoietts.commands.say import PARAGRAPH_PAUSE, SAMPLE_RATE, SENTENCE_PAUSE

    first = expected_audio(models, workspace["voice"], "First paragraph, one sentence.")
    second = expected_audio(models, workspace["voice"], "Second paragraph. It has two sentences.")
    gap = int(PARAGRAPH_PAUSE * SAMPLE_RATE)
    assert pcm.size == first.size + gap + second.size
    expected = np.concatenate([first, np.zeros(gap, np.float32), second])
    assert np.abs(pcm / 32767 - np.clip(expected, -1, 1)).max() <= 1.5 / 32767
    assert SENTENCE_PAUSE < PARAGRAPH_PAUSE


def test_play_writes_the_same_audio_to_the_device(env, workspace, models, tmp_path, monkeypatch, capsys):
    """--play through sounddevice's OutputStream (a recording stand-in: this machine has no sound card)."""
    played, events = [], []

    class OutputStream:
        def __init__(self, samplerate, channels, dtype):
            assert (samplerate, channels, dtype) == (24000, 1, "float32")

        def start(self):
            events.append("start")

        def write(self, block):
            assert block.ndim == 2 and block.shape[1] == 1
            played.append(block[:, 0].copy())

        def stop(self):
            events.append("stop")

        def close(self):
            events.append("close")

    fake = types.SimpleNamespace(query_devices=lambda kind: {"name": "test"}, OutputStream=OutputStream)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    out = tmp_path / "also.wav"
    result = run(TEXT, "--voice", workspace["voice"], "--play", "--out", out, "--models-dir", models, *BASE,
                 monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert events == ["start", "stop", "close"]  # stop() waits for the buffer to drain
    samples, _ = soundfile.read(out, dtype="float32")
    heard = np.concatenate(played)
    assert heard.shape == samples.shape and np.abs(heard - samples).max() <= 1 / 32767


def test_play_without_an_output_device_is_one_line(env, workspace, models, tmp_path, monkeypatch, capsys):
    class PortAudioError(Exception):
        pass

    def no_device(kind):
        raise PortAudioError("Error querying device -1")

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(query_devices=no_device))
    line = one_error_line(run(TEXT, "--voice", workspace["voice"], "--play", "--out", tmp_path / "x.wav",
                              "--models-dir", models, *BASE, monkeypatch=monkeypatch, capsys=capsys))
    assert line.startswith("error: --play: no audio output device is available here")
    assert not list(tmp_path.iterdir())  # nothing half-written
    monkeypatch.delitem(sys.modules, "sounddevice")
    import builtins

    real_import = builtins.__import__

    def without_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_portaudio)
    line = one_error_line(run(TEXT, "--voice", workspace["voice"], "--play", "--models-dir", models, *BASE,
                              monkeypatch=monkeypatch, capsys=capsys))
    assert "PortAudio library not found" in line and "libportaudio2" in line


def test_user_mistakes_are_one_line(env, workspace, models, tmp_path, monkeypatch, capsys):
    voice = workspace["voice"]

    def error(*args):
        return one_error_line(run(*args, monkeypatch=monkeypatch, capsys=capsys))

    assert "--voice" in error(TEXT, "--out", tmp_path / "a.wav", "--models-dir", models)
    assert "--out FILE.wav, --out - (raw PCM on stdout) or --play" in error(TEXT, "--voice", voice, "--models-dir", models)
    assert "give a .wav file name" in error(TEXT, "--voice", voice, "--out", tmp_path / "a.mp3", "--models-dir", models)
    assert "nothing to say" in error("   ", "--voice", voice, "--out", tmp_path / "a.wav", "--models-dir", models, *BASE)
    assert "unknown preset" in error(TEXT, "--voice", voice, "--out", tmp_path / "a.wav", "--preset", "realtim")
    # The hifi decoder's file is asked for only by the hifi presets.
    bare = tmp_path / "models"
    shutil.copytree(models, bare)
    (bare / "hifidecoder.pth").unlink()
    line = error(TEXT, "--voice", voice, "--out", tmp_path / "a.wav", "--models-dir", bare, *BASE)
    assert "hifidecoder.pth not found" in line and "models download" in line
    assert not (tmp_path / "a.wav").exists()
    fine = run("Hello.", "--voice", voice, "--out", tmp_path / "d.wav", "--models-dir", bare, "--preset", "ultra_fast_v2",
               "--set", "num_autoregressive_samples=2", "--set", "diffusion_iterations=3", *BASE,
               monkeypatch=monkeypatch, capsys=capsys)
    assert fine.returncode == 0, fine.stderr
    assert soundfile.info(tmp_path / "d.wav").duration > 0


def test_the_autoregressive_tier_is_shared_with_diffusion(env, workspace, models, tmp_path, monkeypatch, capsys):
    """ultra_fast_v2 at one candidate samples the codes realtime samples: a later say --preset realtime
    takes them from the AR cache and runs only the hifi decoder."""
    text = "Shared codes between decoders."
    common = ["--voice", workspace["voice"], "--models-dir", models, *BASE]
    first = run(text, *common, "--out", tmp_path / "diffusion.wav", "--preset", "ultra_fast_v2",
                "--set", "num_autoregressive_samples=1", "--set", "diffusion_iterations=3",
                monkeypatch=monkeypatch, capsys=capsys)
    assert first.returncode == 0, first.stderr
    second = run(text, *common, "--out", tmp_path / "hifi.wav", monkeypatch=monkeypatch, capsys=capsys)
    print(second.stderr)
    assert second.returncode == 0 and "1 from the ar cache" in second.stderr
    samples, _ = soundfile.read(tmp_path / "hifi.wav", dtype="float32")
    assert np.abs(samples - np.clip(expected_audio(models, workspace["voice"], text), -1, 1)).max() <= 1.5 / 32767


def test_generate_realtime_renders_a_whole_book(env, workspace, models, tmp_path, monkeypatch, capsys):
    """The realtime preset through generate: every chunk is the hifi decoder's audio of its cached
    autoregressive result, and the book is stitched from them."""
    import torch

    from tests.cli_support import EXAMPLE_BOOK, job_rows
    from tutortoietts.cache import Cache
    from tutortoietts.engine import Tortoise
    from tutortoietts.render import RenderRequest, plan_render
    from tutortoietts.voices import find_voice, load_voice_clips

    job = tmp_path / "job"
    result = cli_in_process("generate", EXAMPLE_BOOK, "--voice", workspace["voice"], "--preset", "realtime",
                            "--models-dir", models, "--format", "wav", "--out", job, *BASE, "-q", "--retries", "0",
                            monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    rows = job_rows(job)
    assert rows and all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows)
    book = soundfile.info(result.stdout.strip())
    assert book.samplerate == 24000 and book.duration > sum(row[5] for row in rows)  # chunks plus pauses
    plan = plan_render(RenderRequest(book=EXAMPLE_BOOK, voice=str(workspace["voice"]), preset="realtime",
                                     models_dir=models, device="cpu", precision="fp32", out_dir=job))
    assert plan.settings.decoder == "hifi"
    tts = Tortoise.load(models, device="cpu", precision="fp32")
    voice = tts.voice_latents(load_voice_clips(find_voice(str(workspace["voice"]))))
    with Cache() as cache:
        for chunk in plan.chunks[:4]:
            ar = cache.get_ar(plan.ar_keys[chunk.cache_key])
            clip = tts.audio_stage(ar, voice, plan.settings, chunk.seed)
            written, _ = soundfile.read(job / "chunks" / f"{chunk.chapter}-{chunk.index}.wav", dtype="float32")
            assert written.shape == clip.samples.shape
            assert np.abs(written - clip.samples.numpy()).max() <= 1e-5
            assert ar.chosen == 0 and torch.isnan(ar.scores).all()  # one candidate, not ranked


# --- chapter previews: generate --chapters ----------------------------------------------------------


def test_chapter_preview_then_the_rest_renders_each_chunk_once(env, workspace, models, tmp_path, monkeypatch, capsys):
    from tests.cli_support import EXAMPLE_BOOK, FAST, job_rows

    job = tmp_path / "job"
    base = ["generate", EXAMPLE_BOOK, "--voice", workspace["voice"], "--models-dir", models, "--format", "wav",
            "--out", job, *FAST, "-q", "--retries", "0"]  # no quality-gate retakes: one attempt = one render
    preview = cli_in_process(*base, "--chapters", "1,3-4", monkeypatch=monkeypatch, capsys=capsys)
    assert preview.returncode == 0, preview.stderr
    rows = job_rows(job)
    done = {chapter for chapter, _, status, *_ in rows if status == "done"}
    pending = {chapter for chapter, _, status, *_ in rows if status == "pending"}
    assert done == {0, 2, 3} and pending == {1}  # chapter 2 (index 1) waits
    outputs = [line for line in preview.stdout.splitlines() if line.strip()]
    assert outputs and all("preview" in Path(line).parts for line in outputs)
    assert soundfile.info(outputs[0]).duration > 0
    assert not list(job.glob("*.wav"))  # no book file from a preview
    before = {(chapter, index): (checksum, attempts) for chapter, index, status, attempts, checksum, *_ in rows if status == "done"}

    rest = cli_in_process(*base, monkeypatch=monkeypatch, capsys=capsys)
    assert rest.returncode == 0, rest.stderr
    rows = job_rows(job)
    assert all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows)  # nothing rendered twice
    assert all(before[(chapter, index)] == (checksum, attempts)
               for chapter, index, _, attempts, checksum, *_ in rows if (chapter, index) in before)
    assert Path(rest.stdout.strip()).parent == job and soundfile.info(rest.stdout.strip()).duration > 0


@pytest.mark.parametrize("spec, words", [("9", "the book has chapters 1 to 4"), ("2-1", "the book has chapters 1 to 4"),
                                         ("one", "numbers and ranges like 1,3-4"), ("0", "chapters 1 to 4")])
def test_bad_chapter_lists_are_one_line(env, workspace, models, tmp_path, monkeypatch, capsys, spec, words):
    from tests.cli_support import EXAMPLE_BOOK, FAST

    line = one_error_line(cli_in_process("generate", EXAMPLE_BOOK, "--voice", workspace["voice"], "--models-dir", models,
                                         "--format", "wav", "--out", tmp_path / "job", *FAST, "--chapters", spec,
                                         monkeypatch=monkeypatch, capsys=capsys))
    assert words in line
    assert not (tmp_path / "job").exists()  # refused before the job folder was made


def test_a_streamed_result_serves_the_diffusion_decoder(env, workspace, models, tmp_path, monkeypatch, capsys):
    """The other way round: say --preset realtime caches its streamed result (hifi latents only), and a
    diffusion run at one candidate speaks it, its diffusion latents computed from the cached codes."""
    text = "Codes streamed first, diffused later."
    common = ["--voice", workspace["voice"], "--models-dir", models, *BASE]
    first = run(text, *common, "--out", tmp_path / "hifi.wav", monkeypatch=monkeypatch, capsys=capsys)
    assert first.returncode == 0, first.stderr
    diffusion = ["--preset", "ultra_fast_v2", "--set", "num_autoregressive_samples=1", "--set", "diffusion_iterations=3"]
    second = run(text, *common, "--out", tmp_path / "diffusion.wav", *diffusion, monkeypatch=monkeypatch, capsys=capsys)
    print(second.stderr)
    assert second.returncode == 0 and "1 from the ar cache" in second.stderr
    samples, _ = soundfile.read(tmp_path / "diffusion.wav", dtype="float32")
    expected = expected_audio(models, workspace["voice"], text, "ultra_fast_v2", num_autoregressive_samples=1,
                              diffusion_iterations=3)
    assert np.abs(samples - np.clip(expected, -1, 1)).max() <= 1.5 / 32767
