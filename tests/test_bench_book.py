"""`tutortoietts bench --book` on tiny weights through the CLI: the report's structure and its arithmetic, not its speeds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODES = 6


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_book_report(tiny_models_dir, tmp_path):
    book = tmp_path / "book.md"
    book.write_text("# Book\n\nThe keeper climbed the stairs at dusk.\n\nHe lit the lamp before the fog came in.\n\n"
                    "The ships passed safely all night.\n")
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "tutortoietts.cli", "bench", "--book", str(book), "--chunks", "2",
                           "--codes", str(CODES), "--models-dir", str(tiny_models_dir), "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout[-5000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert list(report["sides"]) == ["serial", "batched", "reference"]
    assert [chunk["text"] for chunk in report["chunks"]] == ["The keeper climbed the stairs at dusk.",
                                                             "He lit the lamp before the fog came in."]
    for name, side in report["sides"].items():
        for key in ("audio_seconds_per_second", "wall_seconds", "audio_seconds", "peak_memory_gb", "ar_steps_per_second",
                    "codes_per_second", "ar_seconds_per_chunk"):
            assert positive(side[key]), (name, key)
        assert math.isclose(side["audio_seconds_per_second"], side["audio_seconds"] / side["wall_seconds"])
        assert set(side["stage_seconds"]) == {"autoregressive", "rerank", "latents", "diffusion", "vocoder"}
        assert side["chunks"] == 2 and side["threads"] == 1
    serial, batched = report["sides"]["serial"], report["sides"]["batched"]
    # Random weights do not stop: serial decodes every code of every chunk, 8 candidates a step; the
    # batched side decodes both chunks' 16 candidates together (the first code comes from the prefill).
    assert serial["ar_steps"] == 2 * CODES and serial["rows_per_step"] == 8
    assert batched["ar_steps"] == CODES - 1 and batched["rows_per_step"] == 16 and batched["slots"] == 32
    assert math.isclose(report["ratios"]["batched_vs_serial_audio_per_second"],
                        batched["audio_seconds_per_second"] / serial["audio_seconds_per_second"])
    assert set(report["ratios"]) == {"batched_vs_serial_audio_per_second", "batched_vs_serial_ar_per_chunk",
                                     "batched_vs_reference_audio_per_second", "serial_vs_reference_audio_per_second"}
    assert "audio s / s" in done.stdout and "rows/step" in done.stdout
