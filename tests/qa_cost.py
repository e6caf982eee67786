"""What the quality checks cost against rendering, per chunk, on the CPU: the real engine on the example book.

    python -m tests.qa_cost MODELS_DIR CHUNKS ['{"max_mel_tokens": 200}']      (THREADS=1 by default)

Prints wall and CPU seconds of rendering (ultra_fast_v2), of the checks and of pocketsphinx for each
chunk, and their shares. CPU time is the figure to read on a shared machine. Not a test: it renders
for minutes (tiny weights) to an hour (full-size weights on two cores).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from tutortoietts import qa
from tutortoietts.asr import PocketsphinxRecogniser
from tutortoietts.engine.pipeline import Tortoise
from tutortoietts.render import RenderRequest, plan_render
from tutortoietts.voices import CONDITIONING_SAMPLE_RATE, load_voice_clips

BOOK = Path(__file__).resolve().parent.parent / "examples" / "book.md"


def timed(action):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(models_dir: str, count: int, overrides: dict) -> None:
    threads = int(os.environ.get("THREADS", "1"))
    torch.set_num_threads(threads)
    plan = plan_render(RenderRequest(book=BOOK, voice="emma", preset="ultra_fast_v2", overrides=overrides,
                                     models_dir=Path(models_dir), device="cpu", out_dir=Path("qa-cost-job")))
    settings = plan.settings
    print(f"{settings.precision}, {settings.num_autoregressive_samples} candidates, {settings.diffusion_iterations} "
          f"diffusion steps, max_mel_tokens {settings.max_mel_tokens}, {threads} thread(s)", flush=True)
    tts = Tortoise.load(plan.models_dir, "cpu", settings.precision)
    clips = load_voice_clips(plan.voice)
    voice = tts.voice_latents(clips)
    profile, _, profile_cpu = timed(lambda: qa.voice_profile(clips, CONDITIONING_SAMPLE_RATE))
    recogniser = PocketsphinxRecogniser()
    totals = {"audio": 0.0, "render": [0.0, 0.0], "checks": [0.0, 0.0], "asr": [0.0, 0.0]}
    for number, chunk in enumerate(plan.chunks[1 : 1 + count], 1):
        def synthesize():
            ar = tts.autoregressive_stage(chunk.text, voice, settings, chunk.seed)
            return ar, tts.audio_stage(ar, voice, settings, chunk.seed)

        (ar, clip), *render = timed(synthesize)
        figures, *checks = timed(lambda: qa.chunk_figures(
            clip.samples, clip.sample_rate, chunk.text, stopped=bool(ar.stopped[ar.chosen]),
            clvp_score=float(ar.scores[ar.chosen]), voice=profile))
        _, *asr = timed(lambda: recogniser.score(qa.to_analysis_rate(clip.samples, clip.sample_rate),
                                                 qa.spoken_words(chunk.text)))
        totals["audio"] += clip.seconds
        for name, pair in (("render", render), ("checks", checks), ("asr", asr)):
            totals[name] = [a + b for a, b in zip(totals[name], pair)]
        print(f"chunk {number}: {clip.seconds:.1f} s of audio | render wall {render[0]:.1f} s, CPU {render[1]:.1f} s | "
              f"checks wall {checks[0]:.2f} s, CPU {checks[1]:.2f} s | pocketsphinx wall {asr[0]:.2f} s, CPU {asr[1]:.2f} s "
              f"| {qa.judge(figures)}", flush=True)
    render = totals["render"]
    share = {name: [100 * totals[name][i] / render[i] for i in (0, 1)] for name in ("checks", "asr")}
    print(f"total: {totals['audio']:.1f} s of audio; render wall {render[0]:.1f} s, CPU {render[1]:.1f} s; "
          f"checks {share['checks'][1]:.2f}% of the render's CPU time ({share['checks'][0]:.2f}% wall); "
          f"pocketsphinx {share['asr'][1]:.2f}% CPU ({share['asr'][0]:.2f}% wall); "
          f"the voice's profile once: {profile_cpu:.2f} s CPU")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
