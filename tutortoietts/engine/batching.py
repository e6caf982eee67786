"""Batched decoding across chunks: many chunks' candidates sample together in one static KV cache.

The serial path (decoding.generate_codes) decodes one chunk's candidates at a time, a handful
of rows that leave the matrix units half idle. Here every cache row ("slot") holds one
candidate of some chunk; rows have their own text lengths and progress (per-row positions and
masks, gpt.SlotPositions), and when a candidate stops its slot takes the next candidate at
once (continuous batching), so the batch stays full until the book runs out.

Determinism: a chunk's codes must not depend on which chunks share its batch, or a resumed job
(a different set of pending chunks) would render different audio. So nothing a row computes
reads another row:
- its prefix is prefilled alone (batch 1) and copied into its slot;
- attention masks every cache position past its own to -inf: those add exactly zero;
- its random numbers come from a counter-based generator keyed by (its chunk's seed, its
  candidate index, the step), never from a stream other rows also draw from;
- the shared matrix products run at one shape class: at least MIN_SLOTS rows (see there).
tests/test_batching.py checks that a chunk's codes are bit-identical alone, among other chunks,
in another slot and at another slot count. The codes differ from the serial path's (which draws
every candidate from one seeded stream, as the reference does), so the cache keys tell the two
apart (render.py: the AR key's "decoder").
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from tutortoietts.engine.decoding import PROMPT_TOKEN, sampling_probs
from tutortoietts.engine.timing import NO_INSTRUMENTS, Instruments, synchronize
from tutortoietts.errors import UserError

# fp32 matrix products on the CPU (MKL) give a row different bits at 1, 2-11 and >= 12 rows
# (2 threads; >= 4 with 1 thread), and the same bits at any count from there up to 200 rows
# (measured, torch 2.13, 2-core EPYC; bf16 was identical at every count). The decode step runs
# at least this many rows, so a row's result does not depend on how many slots are busy.
MIN_SLOTS = 16
# On the CPU a step attends only the cache positions some row has reached, rounded up to a
# multiple of this: reading the whole static cache every step would cost more than the weights.
WINDOW = 64
_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Counter-based random numbers: one independent stream per candidate, no generator objects.
# ---------------------------------------------------------------------------------------------


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the "lowbias32" mixer) on int64 tensors holding values < 2**32.

    Both multipliers are below 2**31, so every product fits in int64 without overflow.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def row_uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One uniform in [0, 1) per row from (row key, step): keys (B,) int64 < 2**63, steps (B,) -> (B,) float64.

    The same key and step give the same number on any device and in any batch: a candidate's
    stream is its own, however the rows around it change.
    """
    low, high = keys & _MASK32, (keys >> 32) & _MASK32
    x = _mix32(_mix32(low ^ _mix32(steps & _MASK32)) ^ high)
    return x.double() / 2.0**32


def sample_rows(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: probs (B, V), uniforms (B,) -> ids (B,): the first id whose cumulative
    probability exceeds u * total. Ids with probability 0 are never drawn."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    target = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    return (cdf <= target).sum(dim=-1).clamp(max=probs.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# The decode step at fixed shapes (CUDA graphs).
# ---------------------------------------------------------------------------------------------


class DecodeStep:
    """AutoregressiveModel.decode_slots over the slots, as the decoder calls it.

    Eager (the CPU): attends a window of the cache that grows with the rows. `graph=True` (CUDA):
    attends the whole static cache so every shape is fixed, and the step is captured once as a
    CUDA graph and replayed; the capture (and its warm-up calls) is counted in `warmup_seconds`.
    `compile` wraps decode_slots in torch.compile(fullgraph=True) instead (mode "reduce-overhead"
    on CUDA captures graphs itself).
    """

    def __init__(self, model, cache_length: int, *, graph: bool = False, compile: bool = False):
        self.model, self.cache_length = model, cache_length
        self.static = graph or compile  # fixed shapes: the whole cache every step
        self.graph = graph and not compile  # reduce-overhead does its own capture
        self.warmup_seconds = 0.0
        self._captured = None
        self._run = model.decode_slots
        if compile:
            mode = "reduce-overhead" if model.mel_embedding.weight.device.type == "cuda" else "default"
            self._run = torch.compile(model.decode_slots, mode=mode, fullgraph=True, dynamic=False)

    def window(self, furthest: int) -> int:
        """Cache positions a step attends when the furthest row writes at `furthest`."""
        if self.static:
            return self.cache_length
        return min(self.cache_length, -(-(furthest + 1) // WINDOW) * WINDOW)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mel_positions: torch.Tensor,
                 length: int) -> torch.Tensor:
        if not self.graph:
            if self.static and self._captured is None:  # first call of a compiled step: compilation
                start = time.perf_counter()
                out = self._run(tokens, positions, mel_positions, length)
                synchronize(tokens.device)
                self.warmup_seconds += time.perf_counter() - start
                self._captured = True
                return out
            return self._run(tokens, positions, mel_positions, length)
        if self._captured is None:
            self._capture(tokens, positions, mel_positions)
        inputs, graph, logits = self._captured
        for buffer, value in zip(inputs, (tokens, positions, mel_positions)):
            buffer.copy_(value)
        graph.replay()
        return logits

    def _capture(self, tokens, positions, mel_positions) -> None:
        """Warm up on a side stream, then capture one step (the first real one: replaying it is idempotent)."""
        start = time.perf_counter()
        inputs = tuple(value.clone() for value in (tokens, positions, mel_positions))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model.decode_slots(*inputs, self.cache_length)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.model.decode_slots(*inputs, self.cache_length)
        synchronize(tokens.device)
        self._captured = (inputs, graph, logits)
        self.warmup_seconds += time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Continuous batching.
# ---------------------------------------------------------------------------------------------


@dataclass
class ChunkJob:
    """One chunk to sample: the caller's handle, its text ids (1, n) and one random key per candidate."""

    key: object
    text_ids: torch.Tensor
    row_keys: list[int]  # < 2**63 each; len = the number of candidates


@dataclass
class Passed:
    """Something the decoder hands back untouched, in turn (a chunk needing no decoding, an error)."""

    item: object


@dataclass
class SampledChunk:
    """A chunk's candidates as sampled, or why it failed (this chunk alone)."""

    key: object
    text_ids: torch.Tensor
    codes: torch.Tensor | None = None  # (k, max_mel_tokens) int64 on the CPU, stop-padded
    error: Exception | None = None
    seconds: float = 0.0  # its own prefill plus its rows' share of every shared step


@dataclass
class DecodeStats:
    """What the decoder did: shared steps, busy rows summed over steps, and the time in each part."""

    steps: int = 0
    row_steps: int = 0
    slots: int = 0
    seconds: float = 0.0  # steps and sampling
    prefill_seconds: float = 0.0
    warmup_seconds: float = 0.0


@dataclass
class _Chunk:
    job: ChunkJob
    prefix_kv: list | None
    first_logits: torch.Tensor  # (1, V) fp32
    prefix_length: int  # P: cache positions of conditioning and text; the start code sits at P
    codes: torch.Tensor  # (k, max) on the CPU
    waiting: deque = field(default_factory=deque)  # candidate indices not yet in a slot
    running: int = 0
    seconds: float = 0.0
    failed: Exception | None = None


@dataclass
class _Row:
    chunk: _Chunk
    index: int  # candidate index within its chunk
    count: int = 0  # codes sampled so far


class BatchedDecoder:
    """Samples chunks' candidates in `slots` cache rows, refilling each row as soon as it stops.

    `run(jobs)` pulls ChunkJobs (and Passed items) lazily, only when a slot is free, and yields
    lists of finished SampledChunks (and passed items) as they complete.
    """

    def __init__(self, model, cond: torch.Tensor, *, slots: int, max_mel_tokens: int, temperature: float,
                 top_p: float, repetition_penalty: float, step: DecodeStep | None = None,
                 instruments: Instruments = NO_INSTRUMENTS):
        self.model = model
        self.device = model.mel_embedding.weight.device
        self.cond = cond.to(self.device, model.mel_embedding.weight.dtype)
        self.slots = max(int(slots), MIN_SLOTS)
        self.max_mel_tokens = max_mel_tokens
        self.sampling = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
        self.instruments = instruments
        self.cache_length = cache_length(model, max_mel_tokens)
        self.step = step or DecodeStep(model, self.cache_length)
        if self.step.static:
            model.setup_caches(self.slots, self.cache_length)
        else:  # exactly as long as the window, grown and shrunk with it (see AutoregressiveModel.resize_caches)
            model.clear_caches()
            model.setup_caches(self.slots, WINDOW)
        self.allocated = self.cache_length if self.step.static else WINDOW
        self.stats = DecodeStats(slots=self.slots)
        self.rows: list[_Row | None] = [None] * self.slots
        self.stop = model.stop_mel_token
        vocabulary = model.number_mel_codes
        # Each row's next input, kept here and sent to the device once per step.
        self.tokens = [self.stop] * self.slots
        self.positions = [0] * self.slots
        self.mel_positions = [0] * self.slots
        self.seen = torch.zeros(self.slots, vocabulary, dtype=torch.bool, device=self.device)  # (S, V)
        self.row_keys = torch.zeros(self.slots, dtype=torch.long, device=self.device)

    # -- chunks in ------------------------------------------------------------------------

    def _start(self, job: ChunkJob) -> _Chunk:
        """Prefill a chunk alone (batch 1): its first-step logits and its prefix's keys and values."""
        start = time.perf_counter()
        prefix = self.model.embed_prefix(self.cond, job.text_ids.to(self.device))  # (1, P, C); UserError if too long
        logits, kv = self.model.prefill_capture(prefix)
        count = len(job.row_keys)
        chunk = _Chunk(job, kv, logits, prefix.shape[1],
                       torch.full((count, self.max_mel_tokens), self.stop, dtype=torch.long),
                       waiting=deque(range(count)))
        synchronize(self.device)
        chunk.seconds = time.perf_counter() - start
        self.stats.prefill_seconds += chunk.seconds
        return chunk

    def _fit_cache(self, furthest: int) -> int:
        """Cache positions to attend when the furthest row writes at `furthest`: on the CPU the cache is
        resized to that window (grown at once, shrunk only by two windows, so it does not flap)."""
        needed = self.step.window(furthest)
        if not self.step.static and (needed > self.allocated or needed + 2 * WINDOW <= self.allocated):
            self.model.resize_caches(needed)
            self.allocated = needed
        return self.allocated

    def _place(self, chunk: _Chunk, slot: int) -> list[_Chunk]:
        """Put the chunk's next candidate in `slot`: its prefix, its seen-codes, its first code."""
        index = chunk.waiting.popleft()
        self._fit_cache(max(chunk.prefix_length, max(self.positions)))  # its prefix and start code: 0..P
        self.model.load_slot(slot, chunk.prefix_kv)
        if not chunk.waiting:
            chunk.prefix_kv = None  # every candidate has its copy: free the captured prefix
        self.seen[slot] = False
        self.seen[slot, PROMPT_TOKEN] = True  # the reference's prompt ids take part in the penalty
        self.seen[slot, self.model.start_mel_token] = True
        self.row_keys[slot] = chunk.job.row_keys[index]
        self.rows[slot] = _Row(chunk, index)
        chunk.running += 1
        first = self._sample(chunk.first_logits, [slot])  # step 0 draws from the prefill's logits
        return self._advance([slot], first)

    # -- the shared step --------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, slots: list[int]) -> list[int]:
        """One code per listed slot from its logits (len(slots), V); a row whose logits are not
        finite gets -1 (its chunk fails)."""
        index = torch.tensor(slots, device=self.device)
        with self.instruments.range("ar:sampling"):
            finite = torch.isfinite(logits).all(dim=-1)
            probs = sampling_probs(torch.nan_to_num(logits), self.seen[index], **self.sampling)
            steps = torch.tensor([self.rows[s].count for s in slots], device=self.device)
            ids = sample_rows(probs, row_uniforms(self.row_keys[index], steps))
            ids = torch.where(finite, ids, -1)
        return ids.tolist()

    def _advance(self, slots: list[int], ids: list[int]) -> list[_Chunk]:
        """Record each slot's new code; free slots whose candidate stopped; return chunks now complete."""
        finished, seen_slots, seen_codes = [], [], []
        for slot, code in zip(slots, ids):
            row = self.rows[slot]
            chunk = row.chunk
            if code < 0 and chunk.failed is None:
                chunk.failed = FloatingPointError("the autoregressive model's logits are not finite (NaN or inf)")
            if chunk.failed is not None:
                self._free(slot, dirty=True)
                if chunk.running == 0:
                    finished.append(chunk)
                continue
            chunk.codes[row.index, row.count] = code
            seen_slots.append(slot)
            seen_codes.append(code)
            row.count += 1
            if code == self.stop or row.count == self.max_mel_tokens:
                self._free(slot)
                if chunk.running == 0 and not chunk.waiting:
                    finished.append(chunk)
                continue
            # Code t-1 enters at cache position P + t with mel position t + 1, as in the serial loop.
            self.tokens[slot] = code
            self.positions[slot] = chunk.prefix_length + row.count
            self.mel_positions[slot] = row.count + 1
        if seen_slots:
            self.seen[torch.tensor(seen_slots), torch.tensor(seen_codes)] = True
        return finished

    def _free(self, slot: int, dirty: bool = False) -> None:
        chunk = self.rows[slot].chunk
        chunk.running -= 1
        if chunk.failed is not None:
            chunk.waiting.clear()
            chunk.prefix_kv = None
        self.rows[slot] = None
        self.tokens[slot] = self.stop
        self.positions[slot] = 0
        self.mel_positions[slot] = 0
        if dirty:
            self.model.clear_slot(slot)  # non-finite keys or values must not reach the next occupant

    def _step(self) -> list[_Chunk]:
        busy = [slot for slot, row in enumerate(self.rows) if row is not None]
        # Rows past the last busy slot are skipped (slots are taken lowest first), never below MIN_SLOTS.
        count = len(self.rows) if self.step.static else max(MIN_SLOTS, busy[-1] + 1)
        start = time.perf_counter()
        self.instruments.decode_step(self.stats.steps)
        inputs = torch.tensor([self.tokens[:count], self.positions[:count], self.mel_positions[:count]], device=self.device)
        logits = self.step(inputs[0, :, None], inputs[1], inputs[2], self._fit_cache(max(self.positions)))
        ids = self._sample(logits[busy], busy)
        elapsed = time.perf_counter() - start
        share = elapsed / len(busy)
        for slot in busy:
            self.rows[slot].chunk.seconds += share
        self.stats.steps += 1
        self.stats.row_steps += len(busy)
        self.stats.seconds += elapsed
        return self._advance(busy, ids)

    # -- the loop -----------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, jobs: Iterable[ChunkJob | Passed]) -> Iterator[list[SampledChunk | object]]:
        self._source, self._exhausted, self._queue = iter(jobs), False, deque()
        while True:
            out = self._fill()
            if out:
                yield out
            elif any(row is not None for row in self.rows):
                finished = self._step()
                if finished:
                    yield [self._result(chunk) for chunk in finished]
            else:  # nothing running, nothing left to read
                self.stats.warmup_seconds = self.step.warmup_seconds
                return

    def _fill(self) -> list:
        """Give free slots the next candidates, reading chunks only as slots free up; returns what
        is ready to hand back (passed items, chunks that failed to start or finished at once)."""
        out: list = []
        while not self._exhausted or self._queue:
            free = next((slot for slot, row in enumerate(self.rows) if row is None), None)
            if free is None:
                break
            if not self._queue:
                item = next(self._source, None)
                if item is None:
                    self._exhausted = True
                    break
                if isinstance(item, Passed):
                    out.append(item.item)
                    break  # hand it back now rather than reading further ahead
                try:
                    self._queue.append(self._start(item))
                except Exception as error:  # this chunk's own problem (a text too long, ...)
                    out.append(SampledChunk(item.key, item.text_ids, error=error))
                    break
                continue
            chunk = self._queue[0]
            if chunk.waiting:
                out.extend(self._result(done) for done in self._place(chunk, free))
            if not chunk.waiting:
                self._queue.popleft()
        return out

    def _result(self, chunk: _Chunk) -> SampledChunk:
        job = chunk.job
        if chunk.failed is not None:
            return SampledChunk(job.key, job.text_ids, error=chunk.failed, seconds=chunk.seconds)
        return SampledChunk(job.key, job.text_ids, codes=chunk.codes, seconds=chunk.seconds)


def cache_length(model, max_mel_tokens: int) -> int:
    """Static cache positions: the longest prefix (conditioning + the text position table) and
    every code, rounded up to the window."""
    longest = 1 + model.text_pos_embedding.rows + max_mel_tokens
    return -(-longest // WINDOW) * WINDOW


def slot_bytes(model, max_mel_tokens: int) -> int:
    """KV cache bytes one slot takes (keys and values of every layer)."""
    weight = model.mel_head.weight
    dtype = weight.dtype if weight.is_floating_point() else model.final_norm.weight.dtype
    size = torch.empty((), dtype=dtype).element_size()
    return len(model.gpt.h) * 2 * cache_length(model, max_mel_tokens) * model.model_dim * size


# ---------------------------------------------------------------------------------------------
# How many slots: --batch-chunks N, or auto.
# ---------------------------------------------------------------------------------------------

# Rows auto aims for. CPU: a bf16 1024x4096 product costs 0.047 ms per row at 8 rows and
# 0.023 ms at 32 or more (2-core EPYC), and every row past that only adds its own attention.
# GPU: decoding is launch-bound up to far more rows; 128 keeps a 24 GB card's cache near 7 GB.
AUTO_ROWS = {"cpu": 32, "cuda": 128}
CACHE_SHARE = 0.5  # at most this share of the memory left beside the weights goes to the KV cache


def available_memory(device: torch.device) -> int:
    """Bytes the cache may plan on: on CUDA the card's total less what we hold (the same on every run
    on one machine, so auto picks the same slot count), or less if another process took more; on
    the CPU the kernel's MemAvailable."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return min(free, total - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan_slots(model, num_samples: int, max_mel_tokens: int, chunks: int | None, device: torch.device,
               memory: int | None = None) -> int:
    """Cache rows for `chunks` chunks at once (num_samples candidates each), or for auto (None):
    AUTO_ROWS for the device, as whole chunks where they fit, within CACHE_SHARE of the memory.

    Never below MIN_SLOTS. An explicit count whose cache would not fit is a UserError, not an
    out-of-memory crash hours later.
    """
    per_slot = slot_bytes(model, max_mel_tokens)
    budget = int((available_memory(device) if memory is None else memory) * CACHE_SHARE)
    if chunks is None:
        rows = min(AUTO_ROWS.get(device.type, AUTO_ROWS["cpu"]), max(budget // per_slot, 1))
        slots = rows // num_samples * num_samples if rows >= num_samples else rows
        return max(slots, MIN_SLOTS)
    if chunks < 1:
        raise UserError(f"--batch-chunks must be at least 1 (or auto), got {chunks}")
    slots = max(chunks * num_samples, MIN_SLOTS)
    if slots * per_slot > budget:
        fits = max(budget // per_slot // num_samples, 0)
        raise UserError(f"--batch-chunks {chunks} needs {slots * per_slot / 1e9:.1f} GB of cache for {slots} rows, "
                        f"more than half the {budget * 2 / 1e9:.1f} GB free; use --batch-chunks {max(fits, 1)} or auto")
    return slots
