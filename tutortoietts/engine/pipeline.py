"""The Tortoise facade: voice -> sample codes -> CLVP rerank -> latents -> diffusion -> vocoder -> 24 kHz audio.

Every stage is a method of its own, so the render loop, its caches, `profile` and `bench` run
the same code as `synthesize`. Stage outputs come back on the CPU in float32 (codes as int64):
a device-neutral form that caches can store as is.

Randomness comes only from torch.Generators derived from the caller's seed, one per stage, so
a stage gives the same result whether run inside `synthesize` or alone, and nothing touches the
global RNG. The reference's wav2vec "redaction" of bracketed text is not done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Callable, Iterable

import torch

from tutortoietts.engine import checkpoints
from tutortoietts.engine.limits import MAX_TEXT_TOKENS, SAMPLE_RATE
from tutortoietts.engine.results import STOP_MEL_TOKEN, ARResult, Clip, VoiceLatents, sampled_lengths  # noqa: F401  (the public types)
from tutortoietts.engine.timing import NO_INSTRUMENTS, STAGES, Instruments, StageTimer  # noqa: F401  (STAGES for callers)
from tutortoietts.engine.tokenizer import TEXT_TOKEN_LIMIT, Tokenizer, clean
from tutortoietts.errors import UserError

VOCODER_HOP = 256  # output samples per mel frame
RERANK_BATCH = 64  # CLVP scores rows independently; batches only bound memory
# The HiFi decoder runs in fp32 whatever the precision, as api_fast runs it (its autocast covers
# only the autoregressive model), like our vocoder: a tanh waveform generator amplifies rounding.
HIFI_DTYPE = torch.float32

Progress = Callable[[str, int, int], None]  # (stage, step, steps)


def stage_seed(seed: int, stage: str) -> int:
    """A stage's own seed: independent streams per stage, stable across runs and machines."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested, but torch sees no CUDA GPU here")
    return device


def release_freed_memory(device: torch.device) -> None:
    """Hand the heap pages a finished stage freed back to the OS (glibc's malloc_trim).

    glibc keeps freed activation buffers in the heap, so without this each stage's leftovers
    stack up and the peak is the sum of the stages rather than the largest one. Called between
    stages, never inside them: a fixed low mmap threshold did the same for the peak but made
    every large allocation fault in fresh pages and slowed diffusion by a third. No-op off glibc.
    """
    if device.type != "cpu":
        return
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(network dtype, int8 autoregressive weights?) for a Settings.precision on a device."""
    if precision == "auto":
        # bf16 keeps fp32's range, so no overflow surprises; old GPUs without it get fp16.
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16, False
        return torch.bfloat16, False
    if precision == "fp32":
        return torch.float32, False
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
        return torch.float16, False
    if precision == "int8":
        # Weight-only int8 for the autoregressive model (its decode loop is bandwidth-bound);
        # activations and the other networks in bf16 on a GPU, fp32 on the CPU.
        return (torch.bfloat16 if device.type == "cuda" else torch.float32), True
    raise UserError(f"unknown precision {precision!r}: use auto, fp32, bf16, fp16 or int8")


def uses(*names: str):
    """Stage decorator: with low_vram, the named networks are on the device only while the stage runs."""

    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            if not self.low_vram:
                return method(self, *args, **kwargs)
            networks = [getattr(self, name) for name in names]
            for network in networks:
                network.to(self.device)
            try:
                return method(self, *args, **kwargs)
            finally:
                for network in networks:
                    if hasattr(network, "clear_caches"):
                        network.clear_caches()  # the KV cache is not a module buffer: free it here
                    network.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

        return run

    return wrap


class Tortoise:
    """All six networks, loaded once onto one device in one precision (or kept on the CPU between
    stages with low_vram, for GPUs too small to hold them all)."""

    sample_rate = SAMPLE_RATE
    text_token_limit = TEXT_TOKEN_LIMIT  # most tokenizer ids one call can speak
    max_text_tokens = MAX_TEXT_TOKENS

    def __init__(self, networks: dict[str, torch.nn.Module], config: dict[str, dict], device: torch.device,
                 dtype: torch.dtype, precision: str, models_dir: Path | None = None, low_vram: bool = False):
        self.autoregressive = networks["autoregressive"]
        self.clvp = networks["clvp2"]
        self.diffusion = networks["diffusion_decoder"]
        self.vocoder = networks["vocoder"]
        self.rlg_auto = networks["rlg_auto"]
        self.rlg_diffuser = networks["rlg_diffuser"]
        self._hifi_decoder = networks.get("hifidecoder")  # optional: loaded on first use (hifi_decoder)
        self.config = config
        self.device = device
        self.dtype = dtype
        self.precision = precision
        self.models_dir = models_dir
        self.low_vram = low_vram and device.type != "cpu"
        self.tokenizer = Tokenizer()

    @classmethod
    def load(cls, models_dir=None, device: str | torch.device = "cpu", precision: str = "fp32",
             low_vram: bool = False) -> "Tortoise":
        """Find the checkpoints (see checkpoints.find_models_dir), load every network strictly.

        low_vram: keep the networks in CPU memory and move each onto the GPU only for its stage
        (slower: about 1.8 GB crosses the bus per chunk in bf16).
        """
        device = resolve_device(device)
        low_vram = low_vram and device.type != "cpu"
        load_device = torch.device("cpu") if low_vram else device
        dtype, int8 = resolve_precision(precision, device)
        folder = checkpoints.find_models_dir(models_dir)
        config = checkpoints.read_config(folder)
        networks = {}
        for stem in checkpoints.FILES:
            # The random latent generators are two small MLPs run once per voice: fp32 costs nothing.
            # The vocoder stays fp32 too: in bf16 its waveform drifted by up to 0.2 on a 0.8 peak
            # (full size), an audible error for a few percent of the total time.
            stem_dtype = torch.float32 if stem.startswith("rlg") or stem == "vocoder" else dtype
            networks[stem] = checkpoints.load_network(stem, folder, config, load_device, stem_dtype)
        if int8:
            from tutortoietts.engine.quant import quantize_autoregressive

            quantize_autoregressive(networks["autoregressive"])
        return cls(networks, config, device, dtype, precision, folder, low_vram)

    # -- text and voice ----------------------------------------------------------------------

    def tokenize(self, text: str) -> torch.Tensor:
        """Text -> the tokenizer's ids, (1, n), unpadded; a UserError past the length tts() accepts."""
        ids = self.tokenizer.encode(text)
        if not clean(text).strip():  # a lone [SPACE] token is no speech either
            raise UserError("nothing to say: the text is empty after cleaning")
        if len(ids) > self.text_token_limit:
            raise UserError(
                f"text too long for one synthesis: {len(ids)} tokens, at most {self.text_token_limit}; "
                f"split it into shorter pieces ({text[:40]!r}...)"
            )
        return torch.tensor([ids], dtype=torch.long)

    @uses("autoregressive", "diffusion")
    @torch.inference_mode()
    def voice_latents(self, clips: list[torch.Tensor]) -> VoiceLatents:
        """Reference clips (1-D, 22.05 kHz) -> a voice; the reference's get_conditioning_latents."""
        from tutortoietts.engine import audio

        if not clips:
            raise UserError("a voice needs at least one reference clip")
        # (1, clips, bands, frames): every clip is cut or padded to one length by the front-ends.
        ar_mels = torch.stack([audio.conditioning_mel(clip.float().cpu()) for clip in clips], dim=1)
        diffusion_mels = torch.stack([audio.diffusion_mel(clip.float().cpu()) for clip in clips], dim=1)
        ar = self.autoregressive.conditioning_latent(ar_mels.to(self.device, self.dtype))  # (1, d_ar)
        diffusion = self.diffusion.conditioning_latent(diffusion_mels.to(self.device, self.dtype))  # (1, 2C)
        return VoiceLatents(ar.float().cpu(), diffusion.float().cpu())

    @uses("rlg_auto", "rlg_diffuser")
    @torch.inference_mode()
    def random_voice(self, seed: int = 0) -> VoiceLatents:
        """A random but consistent voice from the random latent generators."""
        generator = torch.Generator(self.device).manual_seed(stage_seed(seed, "random_voice"))
        ar = self.rlg_auto(1, generator=generator)  # (1, d_ar)
        diffusion = self.rlg_diffuser(1, generator=generator)  # (1, 2C)
        return VoiceLatents(ar.float().cpu(), diffusion.float().cpu())

    # -- the stages ----------------------------------------------------------------------------

    def _generator(self, seed: int, stage: str) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(stage_seed(seed, stage))

    @uses("autoregressive")
    @torch.inference_mode()
    def sample_raw_codes(self, text_ids: torch.Tensor, voice: VoiceLatents, settings, seed: int,
                         instruments: Instruments = NO_INSTRUMENTS, on_step=None) -> torch.Tensor:
        """num_autoregressive_samples candidate code sequences as sampled: each row ends in stop
        tokens if it stopped. -> (num_autoregressive_samples, max_mel_tokens) int64
        on_step: hears each step's codes and latents (decoding.generate_codes), for streaming."""
        self.autoregressive.keep_layers(getattr(settings, "ar_layers", ()))  # experimental; () = every block
        codes = self.autoregressive.sample(
            voice.autoregressive.to(self.device, self.dtype),
            text_ids.to(self.device),
            num_samples=settings.num_autoregressive_samples,
            max_mel_tokens=settings.max_mel_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            repetition_penalty=settings.repetition_penalty,
            length_penalty=settings.length_penalty,
            batch_size=settings.batch_size(),
            generator=self._generator(seed, "autoregressive"),
            instruments=instruments,
            on_step=on_step,
        )  # (k, T)
        codes = codes.long().cpu()
        release_freed_memory(self.device)
        return codes

    def sample_codes(self, text_ids: torch.Tensor, voice: VoiceLatents, settings, seed: int,
                     instruments: Instruments = NO_INSTRUMENTS) -> torch.Tensor:
        """The candidates fixed up for CLVP and diffusion (gpt.fix_codes), as the stage sequence uses them."""
        from tutortoietts.engine.gpt import fix_codes

        return fix_codes(self.sample_raw_codes(text_ids, voice, settings, seed, instruments))

    @uses("clvp")
    @torch.inference_mode()
    def rerank(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """CLVP's text/speech agreement per candidate: codes (k, T) -> (k,) float32, higher is better."""
        scores = [
            self.clvp.score(text_ids.to(self.device), part.to(self.device)).float().cpu()
            for part in codes.split(RERANK_BATCH)
        ]
        release_freed_memory(self.device)
        return torch.cat(scores)

    @uses("autoregressive")
    @torch.inference_mode()
    def code_latents(self, text_ids: torch.Tensor, codes: torch.Tensor, voice: VoiceLatents,
                     trim: bool = True) -> torch.Tensor:
        """The autoregressive model's last hidden states for given codes: (k, T) -> (k, T', d_ar).

        With `trim` (as tts() does) the latents end where the speech has: at the reference's
        "more than 8 calm codes" point. Several rows share the latest such cut, so they stack.
        """
        from tutortoietts.engine.gpt import trim_latents_at_silence

        latents = self.autoregressive.latents(
            voice.autoregressive.to(self.device, self.dtype), text_ids.to(self.device), codes.to(self.device)
        ).float().cpu()  # (k, T, d)
        if trim:
            keep = max(trim_latents_at_silence(row, lat).shape[0] for row, lat in zip(codes.cpu(), latents))
            latents = latents[:, :keep]
        return latents

    @uses("diffusion")
    @torch.inference_mode()
    def diffuse(self, latents: torch.Tensor, voice: VoiceLatents, settings, noise: torch.Tensor | None = None,
                seed: int = 0, progress: Progress | None = None, shared_timestep: bool = False) -> torch.Tensor:
        """Latents (n, T, d_ar) -> denormalised mel (n, 100, T * 4 * 24000 // 22050), float32.

        shared_timestep: see diffusion.sample_mel (audio_batch's rows must not depend on their batch).
        """
        from tutortoietts.engine.diffusion import sample_mel

        if getattr(settings, "diffusion_steps", "fixed") != "fixed":
            # The count depends on the chunk's text, which only the caller knows (Settings.for_text).
            raise ValueError('diffusion_steps "auto" must be resolved per chunk (settings.for_text(text)) before diffusion')
        steps = (lambda i, n: progress("diffusion", i, n)) if progress is not None else None
        mel = sample_mel(
            self.diffusion,
            latents.to(self.device, self.dtype),
            voice.diffusion.to(self.device, self.dtype),
            steps=settings.diffusion_iterations,
            sampler=settings.sampler,
            cond_free=settings.cond_free,
            cond_free_k=settings.cond_free_k,
            temperature=settings.diffusion_temperature,
            noise=None if noise is None else noise.to(self.device),
            generator=self._generator(seed, "diffusion"),
            progress=steps,
            shared_timestep=shared_timestep,
        )
        mel = mel.float().cpu()
        release_freed_memory(self.device)
        return mel

    @uses("vocoder")
    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor, noise: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """Mel (n, 100, frames) -> waveform (n, 1, frames * 256) in [-1, 1], float32.

        UnivNet takes a noise input (n, noise_dim, frames + 10); without `noise` it is drawn from
        the seed, never from the global RNG.
        """
        wave = self.vocoder.vocode(
            mel.to(self.device, torch.float32),
            None if noise is None else noise.to(self.device, torch.float32),
            generator=self._generator(seed, "vocoder"),
        )
        wave = wave.float().cpu()
        release_freed_memory(self.device)
        return wave

    # -- the stage sequence: written once, run by generate, profile and bench alike ----------------

    def autoregressive_stage(self, text: str, voice: VoiceLatents, settings, seed: int = 0,
                       instruments: Instruments = NO_INSTRUMENTS, progress: Progress | None = None) -> ARResult:
        """Tokenize, sample candidates, rerank them with CLVP, and take the best one's latents."""
        report = progress or (lambda stage, step, steps: None)
        timer = StageTimer(self.device)
        both = _Both(timer, instruments)
        text_ids = self.tokenize(text)
        with both.stage("autoregressive"):
            report("autoregressive", 0, 1)
            sampled = self.sample_raw_codes(text_ids, voice, settings, seed, instruments=instruments)  # (k, T)
        return self.choose_candidate(text_ids, sampled, voice, timer, instruments, report, decoder=settings.decoder)

    def choose_candidate(self, text_ids: torch.Tensor, sampled: torch.Tensor, voice: VoiceLatents, timer: StageTimer,
                         instruments: Instruments = NO_INSTRUMENTS, report=None, decoder: str = "diffusion") -> ARResult:
        """The autoregressive stages after sampling: fix the candidates up, rerank them with CLVP, and take
        the best one's latents, as `decoder` takes them (settings.decoder). `timer` holds the sampling's
        seconds already; rerank and latents are added."""
        from tutortoietts.engine.gpt import fix_codes

        report = report or (lambda stage, step, steps: None)
        both = _Both(timer, instruments)
        stopped = (sampled == STOP_MEL_TOKEN).any(dim=1)  # (k,) False: ran to max_mel_tokens
        codes = fix_codes(sampled)
        with both.stage("rerank"):
            report("rerank", 0, 1)
            if len(codes) > 1:
                scores = self.rerank(text_ids, codes)  # (k,)
                chosen = int(torch.topk(scores, k=1).indices[0])  # topk picks as the reference does (ties included)
            else:  # one candidate: nothing to choose between, CLVP is not run
                scores, chosen = torch.full((1,), float("nan")), 0
        result = ARResult(codes=codes, scores=scores, chosen=chosen, latents=None, stopped=stopped,
                          lengths=sampled_lengths(sampled), text_ids=text_ids.cpu())
        with both.stage("latents"):
            report("latents", 0, 1)
            if decoder == "hifi":
                result.hifi_latents = self.hifi_latents(result, voice)  # (1, n, d)
            else:
                result.latents = self.code_latents(text_ids, codes[chosen : chosen + 1], voice)  # (1, T', d)
        result.timings = dict(timer.seconds)
        return result

    def diffusion_latents(self, ar: ARResult, voice: VoiceLatents) -> torch.Tensor:
        """The result's diffusion latents: its own, or computed from its codes (a hifi run's result)."""
        if ar.latents is not None:
            return ar.latents
        return self.code_latents(ar.text_ids, ar.codes[ar.chosen : ar.chosen + 1], voice)  # (1, T', d)

    def audio_stage(self, ar: ARResult, voice: VoiceLatents, settings, seed: int = 0,
              instruments: Instruments = NO_INSTRUMENTS, progress: Progress | None = None) -> Clip:
        """The chosen candidate's latents to 24 kHz audio: diffusion, then the vocoder; with
        settings.decoder "hifi", the HiFi decoder instead (hifi_audio)."""
        report = progress or (lambda stage, step, steps: None)
        timer = StageTimer(self.device)
        both = _Both(timer, instruments)
        if settings.decoder == "hifi":
            return self.hifi_audio(ar, voice, timer, both, report, instruments)
        latents = ar.latents
        if latents is None:  # a hifi run's result (from the cache): diffusion's latents now
            with both.stage("latents"):
                latents = self.diffusion_latents(ar, voice)
        with both.stage("diffusion"):
            mel = self.diffuse(latents, voice, settings, seed=seed, progress=progress)  # (1, 100, frames)
        with both.stage("vocoder"):
            report("vocoder", 0, 1)
            wave = self.vocode(mel, seed=seed)  # (1, 1, samples)
        return Clip(
            samples=wave.reshape(-1),
            sample_rate=SAMPLE_RATE,
            codes=ar.codes[ar.chosen, : latents.shape[1]],
            timings={**ar.timings, **timer.seconds},
            mel=mel,
        )

    # -- Tortoise 3.0's HiFi decoder: latents straight to audio (api_fast.py) ----------------------

    @property
    def hifi_decoder(self):
        """The HiFi decoder, loaded from hifidecoder.pth on first use: the diffusion path never needs the file."""
        if self._hifi_decoder is None:
            if self.models_dir is None:
                raise UserError("the hifi decoder needs hifidecoder.pth, and this engine was built without a models folder")
            checkpoints.require_optional(self.models_dir, "hifidecoder")  # one line if it is missing
            device = torch.device("cpu") if self.low_vram else self.device
            self._hifi_decoder = checkpoints.load_network("hifidecoder", self.models_dir, self.config, device, HIFI_DTYPE)
        return self._hifi_decoder

    @uses("autoregressive")
    @torch.inference_mode()
    def hifi_latents(self, ar: ARResult, voice: VoiceLatents) -> torch.Tensor:
        """The chosen candidate's latents as api_fast hands them to its HiFi decoder: one per code
        sampled, its stop code included, at the sampling loop's positions (what the reference's
        stream generator yields with its KV cache on; see gpt.latents). -> (1, n, d_ar) float32

        Computed from the fixed-up codes: the same inputs as sampled, except where the stop came
        within the last three codes of max_mel_tokens and fix_codes wrote its end-of-clip tail there.
        """
        if ar.text_ids is None or ar.lengths is None:
            raise ValueError("this ARResult records no text_ids or lengths: run autoregressive_stage again")
        length = int(ar.lengths[ar.chosen])
        codes = ar.codes[ar.chosen : ar.chosen + 1, :length]
        latents = self.autoregressive.latents(voice.autoregressive.to(self.device, self.dtype), ar.text_ids.to(self.device),
                                              codes.to(self.device), sampling_positions=True)
        return latents.float().cpu()

    @uses("hifi_decoder")
    @torch.inference_mode()
    def hifi_decode(self, latents: torch.Tensor, voice: VoiceLatents) -> torch.Tensor:
        """Latents (1, T, d_ar) -> waveform (1, 1, samples) float32 in (-1, 1); = the reference's
        hifi_decoder.inference(latents, voice.autoregressive)."""
        wave = self.hifi_decoder.inference(latents.to(self.device), voice.autoregressive.to(self.device))
        wave = wave.float().cpu()
        release_freed_memory(self.device)
        return wave

    def hifi_audio(self, ar: ARResult, voice: VoiceLatents, timer: StageTimer, both: Instruments, report,
                   instruments: Instruments = NO_INSTRUMENTS) -> Clip:
        """audio_stage with the hifi decoder: the chosen candidate's hifi latents, then the decoder."""
        with both.stage("hifi"):
            report("hifi", 0, 1)
            latents = ar.hifi_latents
            if latents is None:  # a diffusion run's result (from the cache)
                with instruments.range("hifi:latents"):
                    latents = self.hifi_latents(ar, voice)  # (1, n, d)
            with instruments.range("hifi:decode"):
                wave = self.hifi_decode(latents, voice)  # (1, 1, samples)
        return Clip(samples=wave.reshape(-1), sample_rate=SAMPLE_RATE, codes=ar.codes[ar.chosen, : latents.shape[1]],
                    timings={**ar.timings, **timer.seconds})

    def stream(self, text: str, voice: VoiceLatents, settings, seed: int = 0, **windows):
        """Audio pieces of `text` while its codes are sampled (settings.decoder "hifi"): iterate the
        returned streaming.SpeechStream. Joined, the pieces are audio_stage's audio for one candidate."""
        from tutortoietts.engine.streaming import SpeechStream

        if settings.decoder != "hifi":
            raise UserError('streaming needs the hifi decoder: use --preset realtime or --set decoder=hifi')
        return SpeechStream(self, text, voice, settings, seed, **windows)

    # -- the same stages for many chunks at once (engine/batching.py) ----------------------------------

    def autoregressive_batch(self, items: Iterable[tuple], voice: VoiceLatents, settings, *, slots: int,
                             instruments: Instruments = NO_INSTRUMENTS, graph: bool | None = None):
        """autoregressive_stage for many chunks at once: their candidates sample together in `slots` rows
        of one static KV cache (batching.BatchedDecoder), then each chunk is reranked and takes its
        latents alone, as choose_candidate does for one.

        items: (key, text, seed) to compute, or (key, ARResult) already known, handed back in turn;
        read lazily, as slots free up. Yields lists of (key, ARResult or this chunk's exception) as
        chunks complete. A chunk's candidates depend only on its text and seed (each candidate has
        its own random stream, see batching.py), not on the chunks beside it, but differ from
        autoregressive_stage's. `graph`: capture the decode step as a CUDA graph (default: on CUDA).
        After the run, `self.decode_stats` holds the decoder's counts (batching.DecodeStats).
        """
        from tutortoietts.engine.batching import BatchedDecoder, ChunkJob, DecodeStep, Passed, cache_length
        from tutortoietts.engine.decoding import validate_sampling

        validate_sampling(settings.num_autoregressive_samples, settings.max_mel_tokens, settings.temperature,
                          settings.top_p, settings.repetition_penalty, None)
        if settings.max_mel_tokens >= self.autoregressive.mel_pos_embedding.rows:  # as sample() checks it
            raise UserError(f"max_mel_tokens must be at most {self.autoregressive.mel_pos_embedding.rows - 1}, "
                            f"got {settings.max_mel_tokens}")
        if self.low_vram:
            raise UserError("batched rendering keeps the networks on the device: use --batch-chunks 1 with --low-vram")
        count = settings.num_autoregressive_samples
        model = self.autoregressive
        model.keep_layers(settings.ar_layers)  # experimental; () = every block

        def jobs():
            for item in items:
                if isinstance(item[1], ARResult):
                    yield Passed((item[0], item[1]))
                    continue
                key, text, seed = item
                try:
                    text_ids = self.tokenize(text)
                except Exception as error:  # this chunk's own problem
                    yield Passed((key, error))
                    continue
                yield ChunkJob(key, text_ids, [stage_seed(seed, f"autoregressive/{row}") for row in range(count)])

        graph = self.device.type == "cuda" if graph is None else graph
        step = DecodeStep(model, cache_length(model, settings.max_mel_tokens), graph=graph)
        decoder = BatchedDecoder(model, voice.autoregressive, slots=slots, max_mel_tokens=settings.max_mel_tokens,
                                 temperature=settings.temperature, top_p=settings.top_p,
                                 repetition_penalty=settings.repetition_penalty, step=step, instruments=instruments)
        self.decode_stats = decoder.stats
        for group in decoder.run(jobs()):
            finished = []
            for done in group:
                if isinstance(done, tuple):  # passed through
                    finished.append(done)
                elif done.error is not None:
                    finished.append((done.key, done.error))
                else:
                    timer = StageTimer(self.device, seconds={"autoregressive": done.seconds})
                    try:
                        finished.append((done.key, self.choose_candidate(done.text_ids, done.codes, voice, timer, instruments,
                                                                         decoder=settings.decoder)))
                    except Exception as error:
                        finished.append((done.key, error))
            yield finished

    def batch_slots(self, settings, chunks: int | None = None) -> int:
        """KV cache rows for autoregressive_batch: `chunks` chunks' candidates at once, or None for
        auto (from the memory left and the preset; see batching.plan_slots)."""
        from tutortoietts.engine.batching import plan_slots

        return plan_slots(self.autoregressive, settings.num_autoregressive_samples, settings.max_mel_tokens, chunks,
                          self.device)

    def audio_batch(self, ars: list[ARResult], voice: VoiceLatents, settings, seeds: list[int],
                    instruments: Instruments = NO_INSTRUMENTS) -> list[Clip]:
        """audio_stage for chunks whose latents have one length, as one batch (the caller buckets them).

        Each chunk's noise is drawn from its own seed exactly as audio_stage draws it, every row
        shares one time embedding and embeds its latents alone (diffuse's shared_timestep), and the
        vocoder runs chunk by chunk, so a chunk's audio is as alone to 1e-5 (tests/test_batching.py).
        DDPM draws fresh noise from one stream at every step: it runs chunk by chunk.
        """
        from tutortoietts.engine import samplers
        from tutortoietts.engine.diffusion import output_frames

        if settings.decoder == "hifi":  # nothing to diffuse: the HiFi decoder, chunk by chunk
            return [self.audio_stage(ar, voice, settings, seed, instruments) for ar, seed in zip(ars, seeds)]
        ars = [ar if ar.latents is not None else dataclasses.replace(ar, latents=self.diffusion_latents(ar, voice)) for ar in ars]
        if len({ar.latents.shape[1] for ar in ars}) != 1:
            raise ValueError("audio_batch needs latents of one length: bucket the chunks first")
        if len(ars) > 1 and settings.sampler == "ddpm":
            return [clip for ar, seed in zip(ars, seeds) for clip in self.audio_batch([ar], voice, settings, [seed], instruments)]
        timer = StageTimer(self.device)
        both = _Both(timer, instruments)
        frames = output_frames(ars[0].latents.shape[1])
        noise = None
        if len(ars) > 1:  # alone, sample_mel draws the same from the same seed itself
            noise = torch.cat([samplers.standard_normal((1, self.diffusion.in_channels, frames),
                                                        self._generator(seed, "diffusion"), self.device) for seed in seeds])
        with both.stage("diffusion"):
            mel = self.diffuse(torch.cat([ar.latents for ar in ars]), voice, settings, noise=noise, seed=seeds[0],
                               shared_timestep=True)  # (n, 100, frames)
        with both.stage("vocoder"):
            # Chunk by chunk: UnivNet's location-variable convolution (an einsum over the batch)
            # gave a row other bits beside others; it is a few percent of the time.
            wave = torch.cat([self.vocode(mel[row : row + 1], seed=seed) for row, seed in enumerate(seeds)])  # (n, 1, samples)
        share = {name: seconds / len(ars) for name, seconds in timer.seconds.items()}
        return [Clip(samples=wave[row].reshape(-1), sample_rate=SAMPLE_RATE, codes=ar.codes[ar.chosen, : ar.latents.shape[1]],
                     timings={**ar.timings, **share}, mel=mel[row : row + 1]) for row, ar in enumerate(ars)]

    def synthesize(self, text: str, voice: VoiceLatents, settings, seed: int = 0,
                   progress: Progress | None = None, instruments: Instruments = NO_INSTRUMENTS) -> Clip:
        """The reference tts() with k=1: `autoregressive_stage`, then `audio_stage`."""
        ar = self.autoregressive_stage(text, voice, settings, seed, instruments=instruments, progress=progress)
        return self.audio_stage(ar, voice, settings, seed, instruments=instruments, progress=progress)


class _Both(Instruments):
    """The engine's own stage timer and the caller's instruments, entered together."""

    def __init__(self, timer: StageTimer, outer: Instruments):
        self.timer, self.outer = timer, outer

    @contextlib.contextmanager
    def stage(self, name: str):
        with self.outer.stage(name), self.timer.stage(name):
            yield
