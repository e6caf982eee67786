"""Job folder + SQLite state: one row per chunk, a process lock, durable chunk audio, resume."""

from __future__ import annotations

import errno
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
KEPT_DIR = ".kept"  # under chunks/: audio of chunks no longer planned, until the book is finished again
TAKE_COLUMNS = ("cache_key", "attempt", "seed", "take_key", "sha256", "flags", "figures", "source", "render_seconds",
                "check_seconds", "created")
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
CREATE TABLE IF NOT EXISTS takes (
    cache_key TEXT NOT NULL,  -- the chunk's key (its row's cache_key): takes outlive re-plans that keep the chunk
    attempt INTEGER NOT NULL,  -- 1: the chunk's own seed; k > 1: a seed derived from (chunk seed, k)
    seed INTEGER NOT NULL,
    take_key TEXT NOT NULL,  -- this take's audio cache key
    sha256 TEXT NOT NULL,  -- of its samples: the kept take is the one whose sha256 is the chunk row's checksum
    flags TEXT NOT NULL,  -- JSON list: the chunk-local quality checks it failed (qa.judge)
    figures TEXT NOT NULL,  -- JSON object: every figure qa.chunk_figures measured
    source TEXT NOT NULL,  -- "rendered" | "ar-cache" | "audio-cache"
    render_seconds REAL,
    check_seconds REAL,
    created REAL NOT NULL,
    PRIMARY KEY (cache_key, attempt)
);
CREATE TABLE IF NOT EXISTS options (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    request_json TEXT NOT NULL  -- what generate was asked for, so that redo renders and stitches alike
);
"""


def chunk_seed(job_seed: int, text: str) -> int:
    """A chunk's seed from (job seed, its text) only, so order and neighbours never change its audio."""
    data = hashlib.sha256(f"{job_seed}\x00{text}".encode()).digest()
    return int.from_bytes(data[:8], "big") % (2**31)  # fits every RNG's seed range


META_CHUNK = b"ttts"  # our RIFF chunk in every chunk file; WAV readers skip chunks they do not know


@dataclass(frozen=True)
class ChunkFile:
    """What a whole chunk file says about itself."""

    key: str
    sha256: str  # of the sample data
    duration: float


def float_wav_bytes(samples, sample_rate: int, key: str = "") -> tuple[bytes, ChunkFile]:
    """A mono 32-bit float WAV, written by hand, that carries its cache key and the sha256 of its samples.

    By hand because libsndfile adds a timestamped PEAK chunk, which would make identical audio
    give different checksums. Float, so nothing is quantised before stitch normalises loudness.
    The key and hash make the file self-verifying: a damaged or missing job database can be
    rebuilt from the chunk files, and a truncated or altered file is always detected.
    Returns the file's bytes and what read_chunk_file will find in them.
    """
    import numpy as np

    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # 3 = WAVE_FORMAT_IEEE_FLOAT
    # A non-PCM format wants a "fact" chunk holding the sample count.
    fact = struct.pack("<I", len(data) // 4)
    written = ChunkFile(key=key, sha256=hashlib.sha256(data).hexdigest(), duration=len(data) / 4 / sample_rate)
    meta = json.dumps({"key": key, "sha256": written.sha256}).encode()
    meta += b" " * (len(meta) % 2)  # RIFF chunks have even sizes
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
    body += META_CHUNK + struct.pack("<I", len(meta)) + meta
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body, written


def read_chunk_file(path: Path) -> ChunkFile | None:
    """The file's key, hash and duration if it is whole (its samples hash to the sha256 inside it), else None."""
    try:
        return parse_chunk_file(Path(path).read_bytes())
    except OSError:
        return None


def parse_chunk_file(raw: bytes) -> ChunkFile | None:
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    chunks, offset = {}, 12
    while offset + 8 <= len(raw):
        name, size = raw[offset : offset + 4], struct.unpack("<I", raw[offset + 4 : offset + 8])[0]
        chunks[name] = raw[offset + 8 : offset + 8 + size]
        if len(chunks[name]) != size:
            return None  # truncated
        offset += 8 + size + size % 2
    if not {b"fmt ", b"data", META_CHUNK} <= chunks.keys() or len(chunks[b"fmt "]) < 8:
        return None
    try:
        meta = json.loads(chunks[META_CHUNK])
        key, expected = str(meta["key"]), str(meta["sha256"])
    except (ValueError, KeyError, TypeError):
        return None
    data = chunks[b"data"]
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        return None
    sample_rate = struct.unpack("<I", chunks[b"fmt "][4:8])[0]
    if sample_rate <= 0:
        return None
    return ChunkFile(key=key, sha256=actual, duration=len(data) / 4 / sample_rate)


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


def _write_durably(target: Path, data: bytes) -> None:
    """tmp file, fsync, rename, fsync the folder: the target is the old file or the whole new one, never half."""
    temporary = target.with_name(target.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk must not also leave a half file behind
        raise
    _fsync_dir(target.parent)


def lock_holder(lock_path: Path) -> str:
    """The pid written in a lock file, for messages ("" if unknown)."""
    try:
        text = Path(lock_path).read_text().strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


class Job:
    """An open, locked job folder. Use as a context manager; a second process is refused."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.chunks_dir = self.directory / CHUNKS_DIR
        self.kept_dir = self.chunks_dir / KEPT_DIR
        self._lock_handle = None
        self.db: sqlite3.Connection | None = None
        self.notices: list[str] = []  # what open/prepare repaired, for the user to read

    # ------------------------------------------------------------ open / lock

    @classmethod
    def open(cls, directory: Path) -> "Job":
        job = cls(directory)
        if job.directory.exists() and not job.directory.is_dir():
            raise UserError(f"--out is a file, not a folder: {job.directory}")
        try:
            job.chunks_dir.mkdir(parents=True, exist_ok=True)
            job._acquire_lock()
        except OSError as error:
            raise UserError(f"cannot write the job folder {job.directory}: {error.strerror or error}; choose another --out") from None
        try:
            job._connect()
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError):  # locked, disk full, I/O error: not damage
                job.close()
                raise UserError(f"cannot open the job database {job.directory / DB_NAME}: {error}") from None
            job._set_damaged_database_aside(error)
            job._connect()
        return job

    def _connect(self) -> None:
        self.db = sqlite3.connect(self.directory / DB_NAME, timeout=30, isolation_level=None)
        # WAL: readers (`tutortoietts jobs`) never block the writer; synchronous=FULL so a
        # committed "done" survives power loss, matching the fsynced audio it points to.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        verdict = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)

    def _set_damaged_database_aside(self, error: Exception) -> None:
        """Keep the damaged file for inspection and start a fresh one: the chunk files rebuild it."""
        if self.db is not None:
            self.db.close()
            self.db = None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = self.directory / (DB_NAME + suffix)
            if path.exists():
                os.replace(path, self.directory / f"{DB_NAME}{suffix}.damaged-{stamp}")
        self.notices.append(
            f"the job database was damaged ({error}); it was moved to {DB_NAME}.damaged-{stamp} and rebuilt from the chunk files"
        )

    def _acquire_lock(self) -> None:
        lock_path = self.directory / LOCK_NAME
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            pid = lock_holder(lock_path)
            holder = f"process {pid}" if pid else "another process"
            stop = f" (kill {pid})" if pid else ""
            raise UserError(f"tutortoietts {holder} is rendering this job ({self.directory}); wait for it or stop it{stop}") from None
        # The flock is what excludes, and the kernel drops it when its holder dies, even by SIGKILL:
        # a lock file left by a killed process is simply taken over. The pid is for the message above.
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

        Rows whose cache key is unchanged keep their audio, wherever it now sits; the rest become
        pending. `force` makes every row pending. Returns {"created", "replanned", "kept",
        "pending", "recovered", "damaged"}.
        """
        new_hash = plan_hash(plan)
        settings_json = json.dumps(settings, sort_keys=True)
        current = self.info()
        created = current is None
        replanned = created or current["plan_hash"] != new_hash
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if replanned:
                self._replace_rows(plan)
            if created:
                self.db.execute(
                    "INSERT INTO job (id, book_path, book_hash, voice, preset, settings_json, seed, plan_hash, created)"
                    " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (str(book_path), book_hash, voice, preset, settings_json, seed, new_hash, time.time()),
                )
            else:
                self.db.execute(
                    "UPDATE job SET book_path=?, book_hash=?, voice=?, preset=?, settings_json=?, seed=?, plan_hash=?,"
                    " finished=NULL WHERE id = 1",
                    (str(book_path), book_hash, voice, preset, settings_json, seed, new_hash),
                )
            if force:
                self.db.execute("UPDATE chunks SET status='pending', error=NULL")
            # Failed rows get another try on every run.
            self.db.execute("UPDATE chunks SET status='pending' WHERE status='failed'")
        repaired = self.reconcile(adopt=not force)
        counts = self.counts()
        return {"created": created, "replanned": replanned, "kept": counts["done"], "pending": counts["pending"], **repaired}

    def _replace_rows(self, plan: list[PlannedChunk]) -> None:
        """The plan's rows, all pending: reconcile() then gives back every chunk whose audio is on disk."""
        self.db.execute("DELETE FROM chunks")
        self.db.executemany(
            "INSERT INTO chunks (chapter, idx, chapter_title, text, pause_after, seed, cache_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(c.chapter, c.index, c.chapter_title, c.text, c.pause_after, c.seed, c.cache_key) for c in plan],
        )

    def reconcile(self, adopt: bool = True) -> dict:
        """Make rows and chunk files agree, trusting only files that verify themselves.

        1. A whole file in a slot planned for another key (the plan changed, or a paragraph was
           inserted before it) is set aside under its key in chunks/.kept/, so nothing rendered
           is overwritten before it has been placed.
        2. A done row whose file is missing, damaged or holds another key goes back to pending
           ("damaged"). A pending row whose audio exists, in its slot or set aside, becomes done
           ("recovered"): a run killed between the file's rename and the database commit, a
           rebuilt database, or a moved chunk. adopt=False (--force) recovers nothing.
        Returns {"recovered": n, "damaged": n}.
        """
        for stale in self.chunks_dir.glob("*.tmp"):
            stale.unlink()  # a write that a kill interrupted before its rename
        rows = self.rows()
        planned = {self.chunk_path(row.chapter, row.index).name: row.cache_key for row in rows}
        self.kept_dir.mkdir(exist_ok=True)
        in_place: dict[str, ChunkFile] = {}  # slot file name -> what it holds, when that is its planned key
        for path in self.chunks_dir.glob("*.wav"):
            found = read_chunk_file(path)
            if found is None:
                continue
            if planned.get(path.name) == found.key:
                in_place[path.name] = found
            else:
                os.replace(path, self.kept_dir / f"{found.key}.wav")
        damaged, recovered = [], []
        for row in rows:
            target = self.chunk_path(row.chapter, row.index)
            found = in_place.get(target.name)
            whole = found is not None
            if not whole and adopt and row.status == "pending":
                found = self._place_kept(row.cache_key, target)
                whole = found is not None
            if row.status == "done" and not whole:
                damaged.append((row.chapter, row.index))
            elif row.status == "pending" and whole and adopt:
                recovered.append((str(target.relative_to(self.directory)), found.sha256, found.duration, row.chapter, row.index))
        with self.db:
            self.db.executemany("UPDATE chunks SET status='pending' WHERE chapter=? AND idx=?", damaged)
            # attempts stays at least 1: the audio was rendered once, by whichever run made the file.
            self.db.executemany(
                "UPDATE chunks SET status='done', audio_path=?, checksum=?, duration=?, attempts=MAX(attempts, 1),"
                " error=NULL WHERE chapter=? AND idx=?",
                recovered,
            )
        return {"recovered": len(recovered), "damaged": len(damaged)}

    def _place_kept(self, key: str, target: Path) -> ChunkFile | None:
        """Copy a set-aside file into its new slot (a copy: two chunks with the same text share a key)."""
        kept = self.kept_dir / f"{key}.wav"
        raw = kept.read_bytes() if kept.exists() else b""
        found = parse_chunk_file(raw)
        if found is None or found.key != key:
            return None
        _write_durably(target, raw)
        return found

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

    def write_chunk(self, row: ChunkRow, samples, sample_rate: int, seconds: float, take: dict | None = None) -> Path:
        """Write audio durably (self-verifying file, tmp + fsync + rename), then mark the row done.

        `take`: the quality gate's record of this audio's take (see record_take), committed with the row.
        """
        import numpy as np

        target = self.chunk_path(row.chapter, row.index)
        data = np.asarray(samples.detach().float().cpu().numpy() if hasattr(samples, "detach") else samples, dtype=np.float32)
        payload, written = float_wav_bytes(data, sample_rate, key=row.cache_key)
        _write_durably(target, payload)
        with self.db:
            if take is not None:
                self._insert_take(take)
            self.db.execute(
                "UPDATE chunks SET status='done', audio_path=?, checksum=?, duration=?, seconds=?,"
                " attempts=attempts+1, error=NULL WHERE chapter=? AND idx=?",
                (str(target.relative_to(self.directory)), written.sha256, written.duration, seconds, row.chapter, row.index),
            )
        return target

    # ------------------------------------------------------------ takes (the quality gate)

    def _insert_take(self, take: dict) -> None:
        values = {**take, "flags": json.dumps(take["flags"]), "figures": json.dumps(take["figures"], sort_keys=True),
                  "created": take.get("created") or time.time()}
        self.db.execute(f"INSERT OR REPLACE INTO takes ({', '.join(TAKE_COLUMNS)}) VALUES ({', '.join('?' * len(TAKE_COLUMNS))})",
                        [values.get(column) for column in TAKE_COLUMNS])

    def record_take(self, take: dict) -> None:
        """A take that is not (yet) the chunk's audio: its figures and flags only."""
        with self.db:
            self._insert_take(take)

    def takes(self, cache_key: str | None = None) -> list[dict]:
        return _read_takes(self.db, cache_key)

    def forget_takes(self, cache_key: str) -> None:
        """--force: the chunk's earlier takes are rendered again, not reused."""
        with self.db:
            self.db.execute("DELETE FROM takes WHERE cache_key = ?", (cache_key,))

    def replace_chunk(self, row: ChunkRow, text: str, seed: int, cache_key: str) -> ChunkRow:
        """`redo --text`: the row says something else now (its own seed and key); pending until rendered."""
        with self.db:
            self.db.execute("UPDATE chunks SET text=?, seed=?, cache_key=?, status='pending', error=NULL"
                            " WHERE chapter=? AND idx=?", (text, seed, cache_key, row.chapter, row.index))
        return next(r for r in self.rows() if (r.chapter, r.index) == (row.chapter, row.index))

    def set_request(self, request: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO options (id, request_json) VALUES (1, ?)",
                            (json.dumps(request, sort_keys=True),))

    def request(self) -> dict | None:
        row = self.db.execute("SELECT request_json FROM options WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    def mark_failed(self, row: ChunkRow, error: str, seconds: float) -> None:
        with self.db:
            self.db.execute(
                "UPDATE chunks SET status='failed', error=?, seconds=?, attempts=attempts+1 WHERE chapter=? AND idx=?",
                (error, seconds, row.chapter, row.index),
            )

    def mark_finished(self) -> None:
        """The book is exported: audio set aside from earlier plans is no longer needed."""
        with self.db:
            self.db.execute("UPDATE job SET finished=? WHERE id = 1", (time.time(),))
        shutil.rmtree(self.kept_dir, ignore_errors=True)


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
    except sqlite3.DatabaseError as error:
        # Shown, not raised: `generate` on this job sets the file aside and rebuilds it from the chunk files.
        return {"directory": str(directory), "damaged": str(error), "running": _is_locked(Path(directory) / LOCK_NAME)}
    finally:
        db.close()
    info.update(counts=counts, total=sum(counts.values()), audio_seconds=audio, directory=str(directory))
    info["running"] = _is_locked(Path(directory) / LOCK_NAME)
    return info


def _read_takes(db: sqlite3.Connection, cache_key: str | None = None) -> list[dict]:
    query = f"SELECT {', '.join(TAKE_COLUMNS)} FROM takes"
    args: tuple = ()
    if cache_key is not None:
        query += " WHERE cache_key = ?"
        args = (cache_key,)
    takes = []
    for values in db.execute(query + " ORDER BY cache_key, attempt", args):
        take = dict(zip(TAKE_COLUMNS, values))
        take["flags"], take["figures"] = json.loads(take["flags"]), json.loads(take["figures"])
        takes.append(take)
    return takes


def read_job_quality(directory: Path) -> dict | None:
    """A job's chunks, takes and request for `tutortoietts qa`, read-only and without the lock."""
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
        chunks = [ChunkRow(*values) for values in db.execute(
            "SELECT chapter, idx, chapter_title, text, pause_after, seed, cache_key, status, audio_path,"
            " checksum, duration, seconds, attempts, error FROM chunks ORDER BY chapter, idx")]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        takes = _read_takes(db) if "takes" in tables else []  # a job no run of this version has opened
        request = None
        if "options" in tables:
            found = db.execute("SELECT request_json FROM options WHERE id = 1").fetchone()
            request = json.loads(found[0]) if found else None
    except sqlite3.DatabaseError as error:
        raise UserError(f"cannot read the job database {database}: {error}; run generate on this job to rebuild it") from None
    finally:
        db.close()
    return {"info": info, "chunks": chunks, "takes": takes, "request": request}


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


def storage_error(error: Exception, job_dir: Path, done: int) -> UserError:
    """A write that failed for lack of space or permission, as one line that says nothing was lost."""
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in str(error)
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    cause = "the disk is full" if full else f"cannot write{where}: {getattr(error, 'strerror', None) or error}"
    fix = "free some space" if full else "fix the folder's permissions"
    return UserError(f"{cause}; the {done} finished chunks are saved in {job_dir}: {fix} and run the same command again")
