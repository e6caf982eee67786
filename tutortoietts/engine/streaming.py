"""Streaming synthesis with the HiFi decoder: audio pieces while the autoregressive model is still sampling.

api_fast's tts_stream re-decodes every latent so far for each new piece and cross-fades the
overlap, so its cost grows with the square of the utterance and its joins are blends. Here each
piece decodes only its new frames plus the decoder's receptive field on each side (hifigan.py
interpolates by global frame number, so a window computes exactly the frames a whole-utterance
decode computes): the pieces joined equal `Tortoise.hifi_decode` of all the latents, to float
rounding, at a cost that grows linearly.

A frame is decoded once every latent it reads is final (hifigan.settled_frames) and the frames a
receptive field to its right are too; the last piece, after the stop code, decodes the rest.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import torch

from tutortoietts.engine.hifigan import FRAME_HOP, frame_count, latent_span, settled_frames

FIRST_PIECE_CODES = 8  # latents before the first piece: ~0.1 s of audio once the context is kept back
PIECE_CODES = 32  # latents between pieces: ~1.5 s of audio each; the context decoded twice is ~20% extra


class WindowedDecoder:
    """Latents in, one at a time; audio pieces out, each the frames that became final since the last."""

    def __init__(self, decoder, cond: torch.Tensor, first_codes: int = FIRST_PIECE_CODES, piece_codes: int = PIECE_CODES):
        self.decoder = decoder  # a HifiganGenerator
        self.cond = cond  # (1, cond_channels) on the decoder's device
        self.context = decoder.receptive_field()  # frames each side a sample depends on
        self.piece_codes = piece_codes
        self.latents: list[torch.Tensor] = []  # (C,) each, as they came
        self.seconds = 0.0  # spent decoding
        self.emitted = 0  # frames handed out so far
        self.next_at = max(first_codes, 3)

    def push(self, latent: torch.Tensor) -> torch.Tensor | None:
        """Add the next latent (C,); -> a piece (samples,) when one is due and ready, else None."""
        self.latents.append(latent)
        available = len(self.latents)
        if available < self.next_at:
            return None
        stop = settled_frames(available) - self.context  # frames whose right context is final too
        if stop <= self.emitted:
            self.next_at = available + 1  # not enough yet: try again at the next code
            return None
        self.next_at = available + self.piece_codes
        return self._decode(stop, available)

    def finish(self) -> torch.Tensor:
        """Every frame not yet handed out, now that no latent will follow. -> (samples,), maybe empty"""
        total = len(self.latents)
        if total == 0:
            return torch.zeros(0)
        return self._decode(frame_count(total), total)

    def _decode(self, stop: int, total: int) -> torch.Tensor:
        began = time.perf_counter()
        first = self.emitted
        start, end = max(0, first - self.context), min(frame_count(total), stop + self.context)
        lo, hi = latent_span(start, end - start, total)
        window = torch.stack(self.latents[lo:hi])[None]  # (1, t, C): only what these frames read
        wave = self.decoder.decode_frames(window, self.cond, first, stop - first, offset=lo, total=total,
                                          context=self.context)
        self.emitted = stop
        wave = wave.reshape(-1).float().cpu()
        self.seconds += time.perf_counter() - began
        return wave


class _Cancelled(Exception):
    """The consumer stopped reading: end the sampling loop at its next step."""


class SpeechStream:
    """Iterate to get audio pieces (1-D float32 at 24 kHz) of one utterance as its codes are sampled.

    With one candidate (num_autoregressive_samples = 1) sampling runs in a worker thread whose
    per-step latents feed a WindowedDecoder, and pieces come as they are ready. With several,
    CLVP must see every candidate first: the stream then yields the chosen one's audio in one piece.
    After the last piece, `result` holds the ARResult (for the caches: the same as
    autoregressive_stage's with the hifi decoder) and `timings` the seconds to the first piece and in total. Closing the iteration early stops the sampling.
    """

    def __init__(self, tts, text: str, voice, settings, seed: int = 0, first_codes: int = FIRST_PIECE_CODES,
                 piece_codes: int = PIECE_CODES):
        self.tts, self.text, self.voice, self.settings, self.seed = tts, text, voice, settings, seed
        self.first_codes, self.piece_codes = first_codes, piece_codes
        self.result = None  # pipeline.ARResult, once finished
        self.timings: dict[str, float] = {}

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = time.perf_counter()
        pieces = self._pieces() if self.settings.num_autoregressive_samples == 1 else self._whole()
        for piece in pieces:
            self.timings.setdefault("first_piece", time.perf_counter() - start)
            yield piece
        self.timings["total"] = time.perf_counter() - start

    def _whole(self) -> Iterator[torch.Tensor]:
        """Several candidates: sample and rerank them all, then decode the chosen one."""
        tts = self.tts
        self.result = tts.autoregressive_stage(self.text, self.voice, self.settings, self.seed)
        yield tts.audio_stage(self.result, self.voice, self.settings, self.seed).samples

    def _pieces(self) -> Iterator[torch.Tensor]:
        messages: queue.Queue = queue.Queue()
        cancelled = threading.Event()

        def work():
            try:
                with torch.inference_mode():
                    self._sample(messages, cancelled)
                messages.put(("done", None))
            except _Cancelled:
                messages.put(("done", None))
            except BaseException as error:  # handed to the consumer's thread, raised there
                messages.put(("error", error))

        text_ids = self.tts.tokenize(self.text)  # a UserError here, before any thread
        self._text_ids = text_ids
        worker = threading.Thread(target=work, name="tutortoietts-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = messages.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            cancelled.set()
            worker.join()

    def _sample(self, messages: queue.Queue, cancelled: threading.Event) -> None:
        tts = self.tts
        decoder = WindowedDecoder(tts.hifi_decoder, self.voice.autoregressive.to(tts.device),
                                  self.first_codes, self.piece_codes)
        begin = time.perf_counter()

        def on_step(step: int, codes: torch.Tensor, latents: torch.Tensor) -> None:
            if cancelled.is_set():
                raise _Cancelled
            piece = decoder.push(latents[0])
            if piece is not None and piece.numel():
                messages.put(("piece", piece))

        sampled = tts.sample_raw_codes(self._text_ids, self.voice, self.settings, self.seed, on_step=on_step)  # (1, T)
        last = decoder.finish()
        if last.numel():
            messages.put(("piece", last))
        total = time.perf_counter() - begin
        self.result = streamed_result(self._text_ids, sampled, torch.stack(decoder.latents)[None])
        # The decoder ran inside the sampling loop: its share is timed apart.
        self.result.timings = {"autoregressive": total - decoder.seconds, "hifi": decoder.seconds}


def streamed_result(text_ids: torch.Tensor, sampled: torch.Tensor, latents: torch.Tensor):
    """The ARResult of a one-candidate stream: what autoregressive_stage returns for it with the hifi
    decoder, its hifi latents the ones the sampling loop reported (latents (1, n, d_ar))."""
    from tutortoietts.engine.gpt import fix_codes
    from tutortoietts.engine.results import STOP_MEL_TOKEN, ARResult, sampled_lengths

    return ARResult(codes=fix_codes(sampled), scores=torch.full((1,), float("nan")), chosen=0, latents=None,
                    stopped=(sampled == STOP_MEL_TOKEN).any(dim=1), lengths=sampled_lengths(sampled),
                    text_ids=text_ids.cpu(), hifi_latents=latents.float().cpu())


def joined_length(latents: int) -> int:
    """Samples the pieces of an utterance of `latents` latents add up to."""
    return frame_count(latents) * FRAME_HOP
