"""Job state: lock, durable chunk writes, checksum-verified resume, re-planning that keeps valid audio."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import torch

from tutortoietts.errors import UserError
from tutortoietts.jobs import Job, PlannedChunk, chunk_seed, read_job_summary


def plan_of(texts, job_seed=1):
    # Keys stand in for real cache keys: one per text, like the audio key of an unchanged chunk.
    return [PlannedChunk(0, i, "One", t, "paragraph", chunk_seed(job_seed, t), f"key-{t}") for i, t in enumerate(texts)]


def prepare(job, plan, **kw):
    return job.prepare(book_path="b.md", book_hash="h", voice="v", preset="p", settings={"a": 1}, seed=1, plan=plan, **kw)


def test_chunk_seed_depends_on_text_and_job_seed_only():
    assert chunk_seed(1, "a") == chunk_seed(1, "a")
    assert len({chunk_seed(1, "a"), chunk_seed(2, "a"), chunk_seed(1, "b")}) == 3
    assert 0 <= chunk_seed(123, "x") < 2**31


def test_lock_refuses_second_opener(tmp_path):
    with Job.open(tmp_path / "job"):
        with pytest.raises(UserError, match="another tutortoietts process"):
            Job.open(tmp_path / "job")
        # Another process too (flock is per open file, so this is the real case).
        code = "from tutortoietts.jobs import Job; import sys\ntry:\n Job.open(sys.argv[1])\nexcept Exception as e:\n print(type(e).__name__)"
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job")], capture_output=True, text=True).stdout
        assert out.strip() == "UserError"
    with Job.open(tmp_path / "job"):  # released on close
        pass


def test_write_verify_and_resume(tmp_path):
    with Job.open(tmp_path / "job") as job:
        state = prepare(job, plan_of(["a", "b", "c"]))
        assert state["created"] and state["pending"] == 3
        rows = job.rows("pending")
        for row in rows[:2]:
            job.write_chunk(row, torch.linspace(-0.5, 0.5, 2400), 24000, seconds=0.1)
        assert job.counts() == {"pending": 1, "done": 2, "failed": 0}
        assert not list(job.chunks_dir.glob("*.tmp"))
        done = job.rows("done")
        assert done[0].duration == pytest.approx(0.1) and done[0].attempts == 1 and len(done[0].checksum) == 64
        # Damage one file, delete the other: both go back to pending on the next open.
        (tmp_path / "job" / done[0].audio_path).write_bytes(b"garbage")
        (tmp_path / "job" / done[1].audio_path).unlink()
    with Job.open(tmp_path / "job") as job:
        state = prepare(job, plan_of(["a", "b", "c"]))
        assert not state["replanned"] and state["pending"] == 3


def test_replan_keeps_matching_keys_even_when_moved(tmp_path):
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a", "b", "c"]))
        for row in job.rows():
            job.write_chunk(row, torch.full((100,), float(ord(row.text[0])) / 1000), 24000, seconds=1.0)
        checksums = {row.text: row.checksum for row in job.rows()}
        # A chunk inserted at the front, one text edited: a and c are kept (moved), b2 is new.
        state = prepare(job, plan_of(["new", "a", "b2", "c"]))
        assert state["replanned"] and state["kept"] == 2 and state["pending"] == 2
        rows = {row.text: row for row in job.rows()}
        assert rows["a"].index == 1 and rows["a"].status == "done" and rows["a"].checksum == checksums["a"]
        assert rows["c"].audio_path == "chunks/0-3.wav" and rows["c"].status == "done"
        assert job.verify_done() == []  # the moved files really are at their new names
        state = prepare(job, plan_of(["new", "a", "b2", "c"]), force=True)
        assert state["pending"] == 4


def test_failed_rows_and_summary(tmp_path):
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a", "b"]))
        rows = job.rows()
        job.mark_failed(rows[0], "RuntimeError: boom", 0.2)
        job.write_chunk(rows[1], torch.zeros(240), 24000, 0.1)
        summary = read_job_summary(tmp_path / "job")  # readable beside the lock holder (WAL)
        assert summary["counts"] == {"pending": 0, "done": 1, "failed": 1} and summary["running"]
        assert job.rows("failed")[0].error == "RuntimeError: boom"
        prepare(job, plan_of(["a", "b"]))  # a failed row gets another try next run
        assert job.counts()["pending"] == 1
    mode = sqlite3.connect(tmp_path / "job" / "job.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert not read_job_summary(tmp_path / "job")["running"]
