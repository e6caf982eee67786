"""Job state: lock, durable chunk writes, checksum-verified resume, re-planning that keeps valid audio."""

from __future__ import annotations

import os
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
        with pytest.raises(UserError, match=f"process {os.getpid()} is rendering this job"):
            Job.open(tmp_path / "job")
        # Another process too (flock is per open file, so this is the real case); the message names us.
        code = "from tutortoietts.jobs import Job; import sys\ntry:\n Job.open(sys.argv[1])\nexcept Exception as e:\n print(type(e).__name__, e)"
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job")], capture_output=True, text=True).stdout
        assert out.startswith("UserError") and f"(kill {os.getpid()})" in out
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
        assert job.reconcile(adopt=False) == {"recovered": 0, "damaged": 0}  # the moved files really are at their new names
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


def test_chunk_files_verify_themselves(tmp_path):
    from tutortoietts.jobs import float_wav_bytes, read_chunk_file

    import soundfile

    path = tmp_path / "c.wav"
    samples = torch.linspace(-0.5, 0.5, 2400).numpy()
    payload, written = float_wav_bytes(samples, 24000, key="abc")
    path.write_bytes(payload)
    found = read_chunk_file(path)
    assert found == written
    assert found.key == "abc" and found.duration == pytest.approx(0.1) and len(found.sha256) == 64
    assert (soundfile.read(path, dtype="float32")[0] == samples).all()  # still a plain WAV to other readers
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])  # truncated
    assert read_chunk_file(path) is None
    flipped = bytearray(whole)
    flipped[-50] ^= 0x01  # one bit of one sample
    path.write_bytes(bytes(flipped))
    assert read_chunk_file(path) is None
    path.write_bytes(b"RIFF" + os.urandom(500))  # garbled
    assert read_chunk_file(path) is None


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tutortoietts.jobs import Job\n"
                               "job = Job.open(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(tmp_path / "job")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"process {holder.pid} is rendering"):
        Job.open(tmp_path / "job")
    holder.kill()
    holder.wait()
    assert (tmp_path / "job" / "job.lock").read_text().strip() == str(holder.pid)  # the dead holder's file is still there
    with Job.open(tmp_path / "job") as job:
        assert (tmp_path / "job" / "job.lock").read_text().strip() == str(os.getpid())
        assert job.counts() == {"pending": 0, "done": 0, "failed": 0}


def write_all(job):
    for row in job.rows("pending"):
        job.write_chunk(row, torch.full((240,), float(ord(row.text[0])) / 1000), 24000, seconds=0.1)
    return {row.text: row.checksum for row in job.rows()}


@pytest.mark.parametrize("damage", ["garbled", "truncated", "missing"])
def test_damaged_or_missing_database_is_rebuilt_from_chunk_files(tmp_path, damage):
    database = tmp_path / "job" / "job.sqlite"
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a", "b", "c"]))
        checksums = write_all(job)
    if damage == "garbled":
        raw = bytearray(database.read_bytes())
        raw[:100] = os.urandom(100)  # the header: "file is not a database"
        database.write_bytes(bytes(raw))
    elif damage == "truncated":
        database.write_bytes(database.read_bytes()[:1000])
    else:
        database.unlink()
    with Job.open(tmp_path / "job") as job:
        assert bool(job.notices) == (damage != "missing")
        state = prepare(job, plan_of(["a", "b", "c"]))
        assert state["recovered"] == 3 and state["pending"] == 0
        assert {row.text: row.checksum for row in job.rows()} == checksums
        assert all(row.attempts == 1 for row in job.rows())
    if damage != "missing":
        assert list((tmp_path / "job").glob("job.sqlite.damaged-*"))  # kept for inspection
        assert "damaged" not in read_job_summary(tmp_path / "job")


def test_jobs_listing_shows_a_damaged_database(tmp_path):
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a"]))
    (tmp_path / "job" / "job.sqlite").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "job" / f"job.sqlite{suffix}").unlink(missing_ok=True)
    assert "damaged" in read_job_summary(tmp_path / "job")


def test_file_renamed_but_not_committed_is_recovered_not_rendered_again(tmp_path, monkeypatch):
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a", "b"]))
        row = job.rows()[0]
        # A kill between the file's rename and the database commit: the file is there, the row pending.
        monkeypatch.setattr(job, "db", _FailingCommit(job.db))
        with pytest.raises(sqlite3.OperationalError):
            job.write_chunk(row, torch.zeros(240), 24000, 0.1)
        monkeypatch.undo()
        assert job.counts()["done"] == 0 and job.chunk_path(0, 0).exists()
        (job.chunks_dir / "0-1.wav.tmp").write_bytes(b"half a file")  # and another write cut short
    with Job.open(tmp_path / "job") as job:
        state = prepare(job, plan_of(["a", "b"]))
        assert state["recovered"] == 1 and [r.text for r in job.rows("pending")] == ["b"]
        assert job.rows("done")[0].attempts == 1
        assert not list(job.chunks_dir.glob("*.tmp"))


class _FailingCommit:
    """A connection whose writes fail, as a process killed before its commit would leave things."""

    def __init__(self, db):
        self._db = db

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, *args):
        raise sqlite3.OperationalError("killed")


def test_superseded_audio_is_kept_until_the_book_is_finished(tmp_path):
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a", "b"], job_seed=1))
        checksums = write_all(job)
        # Another plan (say, another voice): every key changes; going back restores the audio.
        other = [PlannedChunk(c.chapter, c.index, c.chapter_title, c.text, c.pause_after, c.seed, c.cache_key + "-other")
                 for c in plan_of(["a", "b"])]
        assert prepare(job, other)["pending"] == 2
        state = prepare(job, plan_of(["a", "b"]))
        assert state["recovered"] == 2 and {row.text: row.checksum for row in job.rows()} == checksums
        prepare(job, other)
        job.mark_finished()
        assert not job.kept_dir.exists()
        assert prepare(job, plan_of(["a", "b"]))["pending"] == 2


def test_force_renders_again_even_when_files_are_whole(tmp_path):
    with Job.open(tmp_path / "job") as job:
        prepare(job, plan_of(["a", "b"]))
        write_all(job)
        state = prepare(job, plan_of(["a", "b"]), force=True)
        assert state["pending"] == 2 and state["recovered"] == 0
