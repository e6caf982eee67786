"""Nothing lost, nothing silently wrong: SIGKILL at random moments, damaged files, a full disk, bad folders.

Through the real CLI on tiny random weights (noise, not speech: these tests are about the bytes).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_support import (
    FAST,
    ROOT,
    chunk_pcm,
    cli,
    cli_in_process,
    decoded_pcm,
    done_count,
    ffmpeg_missing,
    job_rows,
    one_error_line,
)
from tutortoietts.jobs import read_chunk_file

pytestmark = pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")

CHAPTERS = 3
PARAGRAPHS = 11  # per chapter: paragraphs never share a chunk, so the book has at least 33 chunks
WORDS = "amber birch cedar delta ember fjord grove harbor island juniper kestrel lantern meadow north".split()


def write_book(path: Path) -> Path:
    """A manuscript of short, distinct paragraphs: one chunk each, so chunk counts are known."""
    rng = random.Random(5)
    lines = ["# The Test Book", ""]
    for chapter in range(CHAPTERS):
        lines += [f"## Part {chapter + 1}", ""]
        for paragraph in range(PARAGRAPHS):
            words = " ".join(rng.choice(WORDS) for _ in range(4))
            lines += [f"Paragraph {paragraph + 1} of part {chapter + 1}: {words}.", ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def book(workspace):
    return write_book(workspace["root"] / "test-book.md")


def common(workspace, models):
    return ["--voice", workspace["voice"], "--models-dir", models, *FAST, "--seed", "11", "--quiet"]


@pytest.fixture(scope="module")
def reference(workspace, models, book):
    """The book rendered once, uninterrupted, with a cache of its own."""
    out = workspace["root"] / "reference-job"
    env = {**workspace["env"], "TUTORTOIETTS_CACHE": str(workspace["root"] / "reference-cache")}
    run = cli("generate", book, "--out", out, *common(workspace, models), env=env)
    rows = job_rows(out)
    print(f"[reliability] uninterrupted: {len(rows)} chunks in {run.seconds:.1f} s")
    assert len(rows) >= 30
    return {"out": out, "rows": rows, "pcm": decoded_pcm(next(out.glob("*.m4b"))), "chunks": chunk_pcm(out),
            "seconds": run.seconds}


def verified_done(out: Path) -> dict[str, int]:
    """Done rows whose file is whole and holds the row's key: {file name: mtime}. Fails on any other done row."""
    import sqlite3

    if not (out / "job.sqlite").exists():
        return {}  # killed before the job folder was made
    db = sqlite3.connect(out / "job.sqlite")
    try:
        rows = db.execute("SELECT audio_path, cache_key FROM chunks WHERE status='done'").fetchall()
    finally:
        db.close()
    stamps = {}
    for audio_path, key in rows:
        found = read_chunk_file(out / audio_path)
        assert found is not None and found.key == key, f"done row with a bad file: {audio_path}"
        stamps[audio_path] = (out / audio_path).stat().st_mtime_ns
    return stamps


def test_sigkill_at_ten_random_moments_loses_nothing(workspace, models, book, reference):
    out = workspace["root"] / "killed-job"
    env = {**workspace["env"], "TUTORTOIETTS_CACHE": str(workspace["root"] / "killed-cache")}
    command = [sys.executable, "-m", "tutortoietts.cli", "generate", str(book), "--out", str(out),
               *map(str, common(workspace, models))]
    total = len(reference["rows"])
    rng = random.Random(20261127)
    # Nine kills a random number of chunks (0-3) plus a random fraction of a second into a run, so
    # they land in start-up, model loading, rendering and file writes alike; the tenth once every
    # chunk is done, in stitching and export. A run that ends before its kill is run again.
    plan = [("chunks", rng.randint(0, 3), rng.uniform(0.0, 0.6)) for _ in range(9)] + [("export", 0, rng.uniform(0.0, 0.8))]
    first_seen: dict[str, int] = {}  # chunk file -> mtime when first seen done: never written again
    kills = []
    for phase, more, delay in plan:
        for _ in range(5):
            start_done = done_count(out)
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = total if phase == "export" else min(start_done + more, total - 1)
            deadline = time.time() + 120
            while done_count(out) < target and process.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                break
            # Finished before the kill: undo nothing, just try again with the rest of the plan.
            delay /= 2
        else:
            pytest.fail(f"could not land a kill in phase {phase}")
        stamps = verified_done(out)
        for name, stamp in stamps.items():
            assert first_seen.setdefault(name, stamp) == stamp, f"{name} was written again after it was done"
        kills.append((phase, start_done, len(stamps)))
        print(f"[reliability] kill {len(kills)} ({phase}, +{more} chunks +{delay:.2f} s): done {start_done} -> {len(stamps)} of {total}")
    assert len(kills) == 10
    final = cli(*command[3:], env=env)
    rows = job_rows(out)
    assert all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows), rows
    for name, stamp in verified_done(out).items():
        assert first_seen.get(name, stamp) == stamp, f"{name} was written again after it was done"
    got = chunk_pcm(out)
    assert got.keys() == reference["chunks"].keys()
    worst = max(float(np.abs(reference["chunks"][k] - got[k]).max()) for k in got)
    assert worst == 0.0
    assert decoded_pcm(next(out.glob("*.m4b"))) == reference["pcm"]
    assert not list(out.glob("**/*.tmp")) and not list(out.glob(".*.partial.*"))
    print(f"[reliability] 10 kills survived; final run {final.seconds:.1f} s; {len(rows)} chunks, each rendered once; "
          f"book PCM identical to the uninterrupted run")


def flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x40
    path.write_bytes(bytes(raw))


def test_damaged_chunks_cache_entries_database_and_output_are_repaired(workspace, models, book, reference, tmp_path):
    import shutil

    # A copy of the finished job, with the reference's cache (its entries will be damaged too).
    out = tmp_path / "job"
    shutil.copytree(reference["out"], out)
    cache = tmp_path / "cache"
    shutil.copytree(workspace["root"] / "reference-cache", cache)
    env = {**workspace["env"], "TUTORTOIETTS_CACHE": str(cache)}
    chunks = sorted((out / "chunks").glob("*.wav"))
    chunks[0].write_bytes(chunks[0].read_bytes()[:-1000])  # truncated
    flip_byte(chunks[1], len(chunks[1].read_bytes()) // 2)  # one altered sample
    chunks[2].unlink()  # missing
    damaged_values = 0
    for value in (cache / "store").rglob("*.val"):  # every cached chunk audio: damaged
        flip_byte(value, value.stat().st_size // 2)
        damaged_values += 1
    book_file = next(out.glob("*.m4b"))
    book_file.write_bytes(book_file.read_bytes()[: book_file.stat().st_size // 3])  # a half-written output
    run = cli("generate", book, "--out", out, *common(workspace, models), env=env)
    assert "3 chunk file(s) were missing or damaged" in run.stderr, run.stderr
    rows = job_rows(out)
    assert sum(row[3] == 2 for row in rows) == 3  # attempts: only the three damaged chunks were rendered again
    assert decoded_pcm(next(out.glob("*.m4b"))) == reference["pcm"]
    print(f"[reliability] 3 damaged chunk files and {damaged_values} damaged cache values: re-rendered, book identical")

    # Now the database itself: garbled, then rebuilt from the chunk files; nothing is rendered.
    database = out / "job.sqlite"
    raw = bytearray(database.read_bytes())
    raw[:100] = bytes(100)
    database.write_bytes(bytes(raw))
    for suffix in ("-wal", "-shm"):
        (out / f"job.sqlite{suffix}").unlink(missing_ok=True)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.wav")}
    run = cli("generate", book, "--out", out, *common(workspace, models), env=env)
    assert "job database was damaged" in run.stderr and f"{len(rows)} finished chunk(s) recovered" in run.stderr, run.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.wav")} == stamps
    assert decoded_pcm(next(out.glob("*.m4b"))) == reference["pcm"]
    assert list(out.glob("job.sqlite.damaged-*"))
    print(f"[reliability] garbled job database: set aside, {len(rows)} chunks recovered from their files, nothing rendered")


def test_second_generate_on_a_running_job_is_refused_with_its_pid(workspace, models, book, tmp_path):
    out = tmp_path / "job"
    env = workspace["env"]
    process = subprocess.Popen([sys.executable, "-m", "tutortoietts.cli", "generate", str(book), "--out", str(out),
                                *map(str, common(workspace, models))], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "job.lock").exists() or (out / "job.lock").read_text().strip() != str(process.pid):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.02)
        line = one_error_line(cli("generate", book, "--out", out, *common(workspace, models), env=env, check=False))
        assert f"process {process.pid} is rendering this job" in line
    finally:
        process.kill()
        process.wait()
    cli("generate", book, "--out", out, *common(workspace, models), env=env)  # the killed holder's lock is taken over
    assert all(status == "done" for _, _, status, *_ in job_rows(out))


def test_disk_full_while_writing_a_chunk(workspace, models, book, tmp_path, monkeypatch, capsys):
    for key in ("TUTORTOIETTS_CACHE", "TUTORTOIETTS_VOICES"):
        monkeypatch.setenv(key, workspace["env"][key])
    out = tmp_path / "job"
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        # Each chunk write fsyncs its file, then the folder: the fifth call is the third chunk's file.
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    args = ["generate", book, "--out", out, *common(workspace, models)]
    line = one_error_line(cli_in_process(*args, monkeypatch=monkeypatch, capsys=capsys))
    assert "the disk is full" in line and "the 2 finished chunks are saved" in line, line
    monkeypatch.setattr(os, "fsync", real_fsync)
    saved = verified_done(out)
    assert len(saved) == 2 and not list((out / "chunks").glob("*.tmp"))
    result = cli_in_process(*args, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert {name: stamp for name, stamp in verified_done(out).items() if name in saved} == saved
    print(f"[reliability] disk full at the third chunk: {line}")


def test_unwritable_output_folder(workspace, models, book, tmp_path, monkeypatch, capsys):
    for key in ("TUTORTOIETTS_CACHE", "TUTORTOIETTS_VOICES"):
        monkeypatch.setenv(key, workspace["env"][key])
    if os.geteuid() == 0:
        target = Path("/sys/tutortoietts-job")  # root ignores permission bits; sysfs refuses even root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "job"
    line = one_error_line(cli_in_process("generate", book, "--out", target, *common(workspace, models),
                                         monkeypatch=monkeypatch, capsys=capsys))
    assert line.startswith(f"error: cannot write the job folder {target}") and "--out" in line
    print(f"[reliability] unwritable --out: {line}")


def test_ffmpeg_missing_is_caught_before_rendering(workspace, models, book, tmp_path, monkeypatch, capsys):
    for key in ("TUTORTOIETTS_CACHE", "TUTORTOIETTS_VOICES"):
        monkeypatch.setenv(key, workspace["env"][key])
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on it
    out = tmp_path / "job"
    line = one_error_line(cli_in_process("generate", book, "--out", out, *common(workspace, models),
                                         monkeypatch=monkeypatch, capsys=capsys))
    assert "ffmpeg not found" in line and "--format wav" in line
    assert not out.exists()  # nothing started, nothing to lose
    print(f"[reliability] ffmpeg missing: {line}")


def test_kill_during_export_never_leaves_a_half_file_under_the_final_name(workspace, models, book, reference, tmp_path):
    import shutil

    out = tmp_path / "job"
    shutil.copytree(reference["out"], out)
    for output in [*out.glob("*.m4b"), *(out / "chapters").glob("*")]:
        output.unlink()  # a finished job whose book was never exported
    # An ffmpeg that writes half a file and hangs: the kill lands mid-export, every time.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffmpeg").write_text('#!/bin/sh\nfor last; do :; done\nhead -c 5000 /dev/urandom > "$last"\nsleep 60\n')
    (fake / "ffmpeg").chmod(0o755)
    env = {**workspace["env"], "PATH": f"{fake}:{os.environ['PATH']}",
           "TUTORTOIETTS_CACHE": str(workspace["root"] / "reference-cache")}
    process = subprocess.Popen([sys.executable, "-m", "tutortoietts.cli", "generate", str(book), "--out", str(out),
                                *map(str, common(workspace, models))], env=env, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("**/.*.partial.*")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: ours and the hanging ffmpeg
    process.wait()
    partial = list(out.glob("**/.*.partial.*"))
    finished = [path for path in [*out.glob("*.m4b"), *(out / "chapters").glob("*.m4a")] if ".partial." not in path.name]
    assert partial and not finished
    cli("generate", book, "--out", out, *common(workspace, models), env={**env, "PATH": os.environ["PATH"]})
    assert decoded_pcm(next(out.glob("*.m4b"))) == reference["pcm"]
    assert not list(out.glob("**/.*.partial.*"))
    print(f"[reliability] kill during export: {len(partial)} partial file(s), no final name; the rerun exported the same book")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume(workspace, models, book, tmp_path, stop):
    out = tmp_path / "job"
    env = {**workspace["env"], "TUTORTOIETTS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "tutortoietts.cli", "generate", str(book), "--out", str(out),
               *map(str, common(workspace, models))]
    # A shell running this suite in the background ignores SIGINT, and Python keeps an inherited
    # "ignore": give the command the default a terminal's Ctrl-C meets.
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while done_count(out) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + stop, (process.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "finished chunks are saved; run the same command again to resume" in lines[0], stderr
    stopped_at = verified_done(out)
    assert 2 <= len(stopped_at) < 36 and not list((out / "chunks").glob("*.tmp"))
    cli(*command[3:], env=env)
    assert all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in job_rows(out))
    print(f"[reliability] {stop.name} after {len(stopped_at)} chunks: exit {128 + stop}: {lines[0]}; resumed")
