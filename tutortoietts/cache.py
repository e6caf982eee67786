"""Size-limited disk caches for voice latents, autoregressive results and chunk audio."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import diskcache

from tutortoietts import __version__
from tutortoietts.errors import UserError
from tutortoietts.paths import cache_dir

if TYPE_CHECKING:
    from tutortoietts.engine.pipeline import ARResult

# Bump the suffix when a stage's output changes for the same inputs, so old entries stop matching.
ENGINE_VERSION = f"tutortoietts-{__version__}/cache-2"
DEFAULT_SIZE_LIMIT = 2 * 1024**3  # 2 GiB: a long book's chunk audio at 24 kHz float32 fits several times
NAMESPACES = ("voice", "ar", "audio")

# ---------------------------------------------------------------- keys


def digest(payload: dict) -> str:
    """sha256 of canonical JSON: sorted keys, no whitespace, so equal inputs give equal keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def normalise_text(text: str) -> str:
    """Whitespace and Unicode form do not change what is spoken, so they do not change the key."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def voice_key(voice_fp: str, weights_fp: str, engine_version: str = ENGINE_VERSION) -> str:
    return digest({"stage": "voice", "voice": voice_fp, "weights": weights_fp, "engine": engine_version})


def ar_key(text: str, voice_fp: str, settings, seed: int, weights_fp: str, engine_version: str = ENGINE_VERSION,
           decoder: str | None = None) -> str:
    """Key of the autoregressive stage: everything that decides the codes, nothing downstream.

    Settings says which of its fields each stage reads (settings.AUTOREGRESSIVE_FIELDS).
    `decoder`: "batched" when the batched renderer samples (other random streams, other codes);
    None, the serial decoder, leaves the key as it always was.
    """
    payload = {
        "stage": "ar",
        "text": normalise_text(text),
        "voice": voice_fp,
        "settings": settings.autoregressive_fields(),
        "seed": seed,
        "weights": weights_fp,
        "engine": engine_version,
    }
    if decoder is not None:
        payload["decoder"] = decoder
    return digest(payload)


def audio_key(ar: str, settings, decoder_fp: str | None = None) -> str:
    """Key of a chunk's audio: its AR key (all upstream inputs) plus what the audio stage reads.

    decoder_fp: the fingerprint of an optional decoder's weights (hifidecoder.pth) when the
    settings use it; the AR key holds the six files' only.
    """
    payload = {"stage": "audio", "ar": ar, "settings": settings.audio_fields()}
    if decoder_fp is not None:
        payload["decoder_weights"] = decoder_fp
    return digest(payload)


# ---------------------------------------------------------------- values


def _to_bytes(obj: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> dict:
    import torch

    # weights_only: a cache file cannot run code even if someone tampers with it.
    return torch.load(io.BytesIO(data), weights_only=True)


# What a write to a full or read-only disk raises, from the value files and from the SQLite index.
WRITE_ERRORS = (OSError, sqlite3.OperationalError)


def _seal(value: bytes) -> bytes:
    """The value behind its sha256: a truncated or altered entry can never be read back as valid."""
    return hashlib.sha256(value).digest() + value


def _unseal(data: bytes) -> bytes | None:
    value = data[32:]
    return value if len(data) >= 32 and hashlib.sha256(value).digest() == data[:32] else None


class Cache:
    """Three namespaces in one diskcache store; hits and misses counted per namespace on disk.

    Only ever a cache: a damaged entry is a miss (and is dropped), a damaged store is set aside
    and started afresh, and a failed write (a full disk) costs a later recomputation, not the run.
    """

    def __init__(self, directory: Path | str | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory) if directory is not None else cache_dir()
        self.notices: list[str] = []  # what was repaired or could not be written, for the user to read
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the cache folder {self.directory}: {error.strerror or error}; "
                            "set TUTORTOIETTS_CACHE to a writable folder") from None
        # Values over 32 KiB (chunk audio, latents) land in their own files; LRU so a re-run keeps its own.
        self._store = self._open("store", size_limit=size_limit, eviction_policy="least-recently-used")
        # Counters live apart, never evicted: the cache may forget values, not its own statistics.
        self._counters = self._open("counters", eviction_policy="none")
        self._write_failed = False

    def _open(self, name: str, **options) -> diskcache.Cache:
        path = self.directory / name
        try:
            store = diskcache.Cache(str(path), **options)
            store.get("__probe__")  # one read of the index, so damage shows here rather than mid-book
            return store
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError):
                raise UserError(f"cannot open the cache {path}: {error}") from None
            aside = path.with_name(f"{name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            self.notices.append(f"the cache index {path} was damaged ({error}); it was moved to {aside.name} and started afresh")
            return diskcache.Cache(str(path), **options)

    def take_notices(self) -> list[str]:
        """What happened since the last call (repairs, failed writes), each said once."""
        notices, self.notices = self.notices, []
        return notices

    def close(self) -> None:
        self._store.close()
        self._counters.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # raw access: namespaced hex-digest string keys, bytes values

    def _get(self, namespace: str, key: str) -> bytes | None:
        try:
            data = self._store.get(f"{namespace}:{key}")
        except sqlite3.DatabaseError as error:
            data = None
            notice = f"the cache could not be read ({error}); run `tutortoietts cache clear` if this repeats"
            if notice not in self.notices:
                self.notices.append(notice)
        value = _unseal(data) if isinstance(data, bytes) else None
        if data is not None and value is None:
            try:
                self._store.delete(f"{namespace}:{key}")  # damaged: recomputed and stored again by the caller
            except WRITE_ERRORS:
                pass  # set() replaces it later anyway
            self._count(f"{namespace}:damaged")
        self._count(f"{namespace}:{'hits' if value is not None else 'misses'}")
        return value

    def _count(self, counter: str) -> None:
        try:
            self._counters.incr(counter)
        except WRITE_ERRORS:
            pass  # statistics are not worth failing a render for

    def _set(self, namespace: str, key: str, value: bytes, weights_fp: str) -> None:
        try:
            # The tag is the weights fingerprint: dropping one checkpoint set's entries is one evict() call.
            self._store.set(f"{namespace}:{key}", _seal(value), tag=weights_fp)
        except WRITE_ERRORS as error:
            # The job folder keeps the audio; a cache that cannot be written only makes later runs slower.
            if not self._write_failed:
                self._write_failed = True
                self.notices.append(f"the cache could not be written ({error}); rendering goes on without it")

    def contains(self, namespace: str, key: str) -> bool:
        return f"{namespace}:{key}" in self._store

    # typed access

    def get_voice_latents(self, key: str):
        data = self._get("voice", key)
        if data is None:
            return None
        return _from_bytes(data)

    def put_voice_latents(self, key: str, autoregressive, diffusion, weights_fp: str) -> None:
        self._set("voice", key, _to_bytes({"autoregressive": autoregressive, "diffusion": diffusion}), weights_fp)

    def get_ar(self, key: str) -> ARResult | None:
        data = self._get("ar", key)
        if data is None:
            return None
        from tutortoietts.engine.pipeline import ARResult

        values = _from_bytes(data)
        if "text_ids" not in values:
            return None  # cached before results recorded their text: the hifi decoder could not use it
        return ARResult(**values)

    def put_ar(self, key: str, result: ARResult, weights_fp: str) -> None:
        # The values only: stage timings describe one run, not the result.
        fields = ("codes", "scores", "chosen", "latents", "stopped", "lengths", "text_ids", "hifi_latents")
        self._set("ar", key, _to_bytes({name: getattr(result, name) for name in fields}), weights_fp)

    def get_audio(self, key: str):
        """(samples float32 tensor (n,), sample_rate) or None."""
        data = self._get("audio", key)
        if data is None:
            return None
        value = _from_bytes(data)
        return value["samples"], int(value["sample_rate"])

    def put_audio(self, key: str, samples, sample_rate: int, weights_fp: str) -> None:
        self._set("audio", key, _to_bytes({"samples": samples.detach().float().cpu().contiguous(), "sample_rate": sample_rate}), weights_fp)

    # housekeeping

    def stats(self) -> dict:
        """Per namespace: entries, hits, misses, hit rate; plus the bytes on disk and the limit."""
        entries = dict.fromkeys(NAMESPACES, 0)
        for key in self._store.iterkeys():
            namespace = str(key).split(":", 1)[0]
            if namespace in entries:
                entries[namespace] += 1
        namespaces = {}
        for namespace in NAMESPACES:
            hits = int(self._counters.get(f"{namespace}:hits", 0))
            misses = int(self._counters.get(f"{namespace}:misses", 0))
            lookups = hits + misses
            namespaces[namespace] = {
                "entries": entries[namespace],
                "hits": hits,
                "misses": misses,
                "damaged": int(self._counters.get(f"{namespace}:damaged", 0)),
                "hit_rate": hits / lookups if lookups else None,
            }
        return {
            "directory": str(self.directory),
            "bytes": self._store.volume(),
            "size_limit": self._store.size_limit,
            "namespaces": namespaces,
        }

    def clear(self, weights_fp: str | None = None) -> int:
        """Drop everything (counters too), or only one weights fingerprint's entries; returns entries removed."""
        if weights_fp is not None:
            return self._store.evict(weights_fp)
        removed = self._store.clear()
        self._counters.clear()
        return removed
