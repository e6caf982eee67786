"""Job folder + SQLite state: one row per chunk, a process lock, durable chunk audio, resume."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from tutortoietts.errors import UserError

DB_NAME = "job.sqlite"
LOCK_NAME = "job.lock"
CHUNKS_DIR = "chunks"
STATUSES = ("pending", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    book_path TEXT NOT NULL,
    book_hash TEXT NOT NULL,
    voice TEXT NOT NULL,
    preset TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    plan_hash TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS chunks (
    chapter INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    chapter_title TEXT NOT NULL,
    text TEXT NOT NULL,
    pause_after TEXT NOT NULL,  -- "sentence" | "paragraph" | "chapter" (stitch turns it into silence)
    seed INTEGER NOT NULL,
    cache_key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    audio_path TEXT,
    checksum TEXT,
    duration REAL,
    seconds REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (chapter, idx)
);
"""


def chunk_seed(job_seed: int, text: str) -> int:
    """A chunk's seed from (job seed, its text) only, so order and neighbours never change its audio."""
    data = hashlib.sha256(f"{job_seed}\x00{text}".encode()).digest()
    return int.from_bytes(data[:8], "big") % (2**31)  # fits every RNG's seed range


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def float_wav_bytes(samples, sample_rate: int) -> bytes:
    """A mono 32-bit float WAV, written by hand: libsndfile adds a timestamped PEAK chunk, which
    would make identical audio give different checksums. Float, so nothing is quantised before
    stitch normalises loudness."""
    import numpy as np

    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # 3 = WAVE_FORMAT_IEEE_FLOAT
    # A non-PCM format wants a "fact" chunk holding the sample count.
    fact = struct.pack("<I", len(data) // 4)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def default_job_dir(book_path: Path) -> Path:
    return Path.cwd() / f"{Path(book_path).stem}-audiobook"


@dataclass(frozen=True)
class PlannedChunk:
    """A chunk as the render loop wants it: where it sits, what it says, its key and seed."""

    chapter: int
    index: int
    chapter_title: str
    text: str
    pause_after: str
    seed: int
    cache_key: str


@dataclass(frozen=True)
class ChunkRow(PlannedChunk):
    """A planned chunk as the job table holds it: plus its status and the rendered file's facts."""

    status: str
    audio_path: str | None
    checksum: str | None
    duration: float | None
    seconds: float | None
    attempts: int
    error: str | None

    @property
    def name(self) -> str:
        return f"{self.chapter}-{self.index}"


def plan_hash(plan: list[PlannedChunk]) -> str:
    rows = [[c.chapter, c.index, c.chapter_title, c.cache_key, c.pause_after] for c in plan]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Job:
    """An open, locked job folder. Use as a context manager; a second process is refused."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.chunks_dir = self.directory / CHUNKS_DIR
        self._lock_handle = None
        self.db: sqlite3.Connection | None = None

    # ------------------------------------------------------------ open / lock

    @classmethod
    def open(cls, directory: Path) -> "Job":
        job = cls(directory)
        if job.directory.exists() and not job.directory.is_dir():
            raise UserError(f"--out is a file, not a folder: {job.directory}")
        job.chunks_dir.mkdir(parents=True, exist_ok=True)
        job._acquire_lock()
        job.db = sqlite3.connect(job.directory / DB_NAME, timeout=30, isolation_level=None)
        # WAL: readers (`tutortoietts jobs`) never block the writer; synchronous=FULL so a
        # committed "done" survives power loss, matching the fsynced audio it points to.
        job.db.execute("PRAGMA journal_mode=WAL")
        job.db.execute("PRAGMA synchronous=FULL")
        job.db.executescript(SCHEMA)
        return job

    def _acquire_lock(self) -> None:
        handle = open(self.directory / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"another tutortoietts process is rendering this job ({self.directory}); wait for it or stop it")
        # The holder's pid, for the curious; the flock itself is what excludes (released on any exit, even SIGKILL).
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ job row

    def info(self) -> dict | None:
        cursor = self.db.execute("SELECT * FROM job WHERE id = 1")
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cursor.description], row))

    def prepare(self, *, book_path: Path, book_hash: str, voice: str, preset: str, settings: dict, seed: int,
                plan: list[PlannedChunk], force: bool = False) -> dict:
        """Create the job, or bring an existing one up to date with a (maybe changed) plan.

        Rows whose cache key is unchanged keep their audio; the rest become pending. `force`
        makes every row pending. Returns {"created", "replanned", "kept", "pending"}.
        """
        new_hash = plan_hash(plan)
        settings_json = json.dumps(settings, sort_keys=True)
        current = self.info()
        created = current is None
        replanned = created or current["plan_hash"] != new_hash
        if replanned:
            self._replan(plan)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if created:
                self.db.execute(
                    "INSERT INTO job (id, book_path, book_hash, voice, preset, settings_json, seed, plan_hash, created)"
                    " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (str(book_path), book_hash, voice, preset, settings_json, seed, new_hash, time.time()),
                )
            else:
                self.db.execute(
                    "UPDATE job SET book_path=?, book_hash=?, voice=?, preset=?, settings_json=?, seed=?, plan_hash=?"
                    " WHERE id = 1",
                    (str(book_path), book_hash, voice, preset, settings_json, seed, new_hash),
                )
            if force:
                self.db.execute("UPDATE chunks SET status='pending', error=NULL")
            # Failed rows get another try on every run.
            self.db.execute("UPDATE chunks SET status='pending' WHERE status='failed'")
        self.verify_done()
        counts = self.counts()
        return {"created": created, "replanned": replanned, "kept": counts["done"], "pending": counts["pending"]}

    def _replan(self, plan: list[PlannedChunk]) -> None:
        """Replace the chunk rows with `plan`, keeping the audio of every chunk whose key survives.

        A kept chunk may have moved (a paragraph inserted before it), so its file is staged
        under its key first, then copied to its new name; the checksums make every step safe
        to interrupt (a row whose file does not verify is simply rendered again).
        """
        staging = self.chunks_dir / ".replan"
        staging.mkdir(exist_ok=True)
        wanted = {c.cache_key for c in plan}
        reusable: dict[str, tuple[str, float]] = {}  # key -> (checksum, duration)
        for row in self.rows():
            if row.status != "done" or row.cache_key not in wanted or row.cache_key in reusable:
                continue
            path = self.directory / row.audio_path if row.audio_path else None
            if path is not None and path.is_file() and file_sha256(path) == row.checksum:
                os.replace(path, staging / f"{row.cache_key}.wav")
                reusable[row.cache_key] = (row.checksum, row.duration)
        placed = []
        for chunk in plan:
            if chunk.cache_key in reusable:
                target = self.chunk_path(chunk.chapter, chunk.index)
                shutil.copyfile(staging / f"{chunk.cache_key}.wav", target)
                placed.append((chunk, target))
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM chunks")
            for chunk in plan:
                self.db.execute(
                    "INSERT INTO chunks (chapter, idx, chapter_title, text, pause_after, seed, cache_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (chunk.chapter, chunk.index, chunk.chapter_title, chunk.text, chunk.pause_after, chunk.seed, chunk.cache_key),
                )
            for chunk, target in placed:
                checksum, duration = reusable[chunk.cache_key]
                self.db.execute(
                    "UPDATE chunks SET status='done', audio_path=?, checksum=?, duration=?, attempts=0"
                    " WHERE chapter=? AND idx=?",
                    (str(target.relative_to(self.directory)), checksum, duration, chunk.chapter, chunk.index),
                )
        shutil.rmtree(staging, ignore_errors=True)

    def verify_done(self) -> list[ChunkRow]:
        """Done rows whose file is gone or altered go back to pending; returns them."""
        broken = []
        for row in self.rows():
            if row.status != "done":
                continue
            path = self.directory / row.audio_path if row.audio_path else None
            if path is None or not path.is_file() or file_sha256(path) != row.checksum:
                broken.append(row)
        with self.db:
            for row in broken:
                self.db.execute("UPDATE chunks SET status='pending' WHERE chapter=? AND idx=?", (row.chapter, row.index))
        return broken

    # ------------------------------------------------------------ rows

    def rows(self, status: str | None = None) -> list[ChunkRow]:
        query = (
            "SELECT chapter, idx, chapter_title, text, pause_after, seed, cache_key, status, audio_path,"
            " checksum, duration, seconds, attempts, error FROM chunks"
        )
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        query += " ORDER BY chapter, idx"
        return [ChunkRow(*row) for row in self.db.execute(query, args)]

    def counts(self) -> dict:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM chunks GROUP BY status"):
            counts[status] = n
        return counts

    def chunk_path(self, chapter: int, index: int) -> Path:
        return self.chunks_dir / f"{chapter}-{index}.wav"

    def write_chunk(self, row: ChunkRow, samples, sample_rate: int, seconds: float) -> Path:
        """Write audio durably, then mark the row done: tmp file, fsync, rename, fsync dir, commit."""
        import numpy as np

        target = self.chunk_path(row.chapter, row.index)
        temporary = target.with_name(target.name + ".tmp")
        data = np.asarray(samples.detach().float().cpu().numpy() if hasattr(samples, "detach") else samples, dtype=np.float32)
        with open(temporary, "wb") as handle:
            handle.write(float_wav_bytes(data, sample_rate))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        _fsync_dir(self.chunks_dir)
        checksum = file_sha256(target)
        duration = len(data) / sample_rate
        with self.db:
            self.db.execute(
                "UPDATE chunks SET status='done', audio_path=?, checksum=?, duration=?, seconds=?,"
                " attempts=attempts+1, error=NULL WHERE chapter=? AND idx=?",
                (str(target.relative_to(self.directory)), checksum, duration, seconds, row.chapter, row.index),
            )
        return target

    def mark_failed(self, row: ChunkRow, error: str, seconds: float) -> None:
        with self.db:
            self.db.execute(
                "UPDATE chunks SET status='failed', error=?, seconds=?, attempts=attempts+1 WHERE chapter=? AND idx=?",
                (error, seconds, row.chapter, row.index),
            )

    def mark_finished(self) -> None:
        with self.db:
            self.db.execute("UPDATE job SET finished=? WHERE id = 1", (time.time(),))


def read_job_summary(directory: Path) -> dict | None:
    """A job's state for `tutortoietts jobs`, read-only and without the lock (WAL lets us read beside a writer)."""
    database = Path(directory) / DB_NAME
    if not database.is_file():
        return None
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        cursor = db.execute("SELECT * FROM job WHERE id = 1")
        row = cursor.fetchone()
        if row is None:
            return None
        info = dict(zip([d[0] for d in cursor.description], row))
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in db.execute("SELECT status, COUNT(*) FROM chunks GROUP BY status"):
            counts[status] = n
        audio = db.execute("SELECT COALESCE(SUM(duration), 0) FROM chunks WHERE status='done'").fetchone()[0]
    finally:
        db.close()
    info.update(counts=counts, total=sum(counts.values()), audio_seconds=audio, directory=str(directory))
    info["running"] = _is_locked(Path(directory) / LOCK_NAME)
    return info


def _is_locked(lock_path: Path) -> bool:
    if not lock_path.exists():
        return False
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def find_jobs(root: Path) -> list[Path]:
    """Job folders directly in `root` (or `root` itself)."""
    root = Path(root)
    found = [root] if (root / DB_NAME).is_file() else []
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if (p / DB_NAME).is_file())
    return found
