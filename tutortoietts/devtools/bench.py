"""`bench`: our engine against the reference tortoise-tts 3.0.0 on the same weights, text and code length.

Each side (reference with and without its KV cache, ours at each precision, the ultra_fast_v2
preset) runs in its own subprocess, so its peak memory is its own; sides alternate within one
invocation so drifting machine load hits them alike. Every side does the same fixed amount of
work: random weights never emit the stop token on purpose, so both sides decode exactly
`code_length` steps. Fidelity comes from deterministic probes on fixed inputs (no sampling
noise): our exact fp32 path against the reference, each fast path against our exact fp32 path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tutortoietts.errors import UserError
from tutortoietts.devtools.profiling import autoregressive_network, measure_bandwidth
from tutortoietts.engine.limits import CONDITIONING_SAMPLE_RATE, SAMPLE_RATE
from tutortoietts.engine.timing import HIFI_STAGES, STAGES, StageTimer, peak_memory_bytes
from tutortoietts.devtools.research import side_quality
from tutortoietts.engine.checkpoints import weights_origin

DEFAULT_TEXT = (
    "The old lighthouse keeper climbed the stairs each evening, counting every step, "
    "and lit the lamp before the fog rolled in."
)
PROBE_SEED = 1234


@dataclass(frozen=True)
class Side:
    """One contestant: which implementation, which preset and precision, which stages it runs."""

    name: str
    kind: str  # "reference" or "ours"
    preset: str = "ultra_fast"
    precision: str = "fp32"
    kv_cache: bool = True  # reference only
    stages: tuple[str, ...] = STAGES


@dataclass
class BenchOptions:
    """What one `bench` invocation measures."""

    models_dir: Path
    device: str = "cpu"
    text: str = DEFAULT_TEXT
    num_samples: int = 16  # the reference's ultra_fast
    code_length: int = 100  # forced: every side decodes exactly this many steps
    diffusion_steps: int = 30  # the reference's ultra_fast; ultra_fast_v2 keeps its own
    repeats: int = 1
    warmup: bool = True
    reference_no_kv: bool = True
    compile: bool = False
    seed: int = 0
    sides: tuple[str, ...] | None = None  # names to run; None = every side for the device
    quick: bool = False  # also shrinks ultra_fast_v2's own samples and steps
    quality: bool = False  # our sides also speak the directive's four texts, measured against ours fp32

    @classmethod
    def quick_run(cls, models_dir: Path, **changes) -> "BenchOptions":
        """A small run: few samples, few codes, few diffusion steps."""
        values = dict(models_dir=models_dir, num_samples=2, code_length=16, diffusion_steps=4, warmup=False, quick=True)
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)


def default_sides(device: str) -> list[Side]:
    sides = [
        Side("reference kv-cache", "reference", kv_cache=True),
        Side("reference no-cache", "reference", kv_cache=False, stages=("autoregressive",)),
        Side("ours fp32", "ours", precision="fp32"),
        Side("ours bf16", "ours", precision="bf16"),
    ]
    if torch.device(device).type == "cuda":
        sides.append(Side("ours fp16", "ours", precision="fp16"))
    sides += [
        Side("ours int8", "ours", precision="int8"),
        Side("ours ultra_fast_v2", "ours", preset="ultra_fast_v2", precision="auto"),
        # Tortoise 3.0's HiFi decoder instead of diffusion and vocoder, one candidate (the realtime preset).
        Side("ours realtime (hifi)", "ours", preset="realtime", precision="auto", stages=HIFI_STAGES),
    ]
    return sides


def choose_sides(options: BenchOptions) -> list[Side]:
    sides = default_sides(options.device)
    if not options.reference_no_kv:
        sides = [side for side in sides if side.name != "reference no-cache"]
    if options.sides:
        known = {side.name for side in sides}
        unknown = [name for name in options.sides if name not in known]
        if unknown:
            raise UserError(f"unknown bench side {unknown[0]!r}; known: {', '.join(sorted(known))}")
        sides = [side for side in sides if side.name in options.sides]
    return sides


# ---------------------------------------------------------------------------------------------
# Models folder and its configuration


def models_config(models_dir: Path) -> dict[str, dict]:
    """The constructor keywords the checkpoints in `models_dir` were written for (its tortoise-config.json)."""
    from tutortoietts.engine.checkpoints import read_config

    return read_config(models_dir)


def default_models_dir() -> Path:
    """A full-size random checkpoint set in the user's cache (paths.bench_models_dir), written on first use (~3 GB)."""
    from tutortoietts.paths import bench_models_dir

    root = bench_models_dir()
    if not (root / "vocoder.pth").exists():
        from tutortoietts.engine.checkpoints import write_random_checkpoints

        print(f"writing full-size random weights to {root} (once)...", file=sys.stderr)
        root.mkdir(parents=True, exist_ok=True)
        write_random_checkpoints(root, "full", seed=0)
    return root


# ---------------------------------------------------------------------------------------------
# Fixed inputs shared by every side


def make_probe(options: BenchOptions, config: dict[str, dict]) -> dict:
    """Seeded inputs every side sees: text ids, voice latents, codes, latents, mel, vocoder noise."""
    from tutortoietts.engine.pipeline import stage_seed
    from tutortoietts.engine.tokenizer import Tokenizer

    text_ids = torch.tensor([Tokenizer().encode(options.text)], dtype=torch.long)  # (1, n)
    if text_ids.shape[1] == 0:
        raise UserError("bench text tokenizes to nothing; pass some words with --text")
    generator = torch.Generator().manual_seed(PROBE_SEED)
    d_ar = config["autoregressive"]["model_dim"]
    channels = config["diffusion_decoder"]["model_channels"]
    noise_dim = config["vocoder"].get("noise_dim", 64)
    probe_length = min(options.code_length, 48)
    frames = probe_length * 4 * SAMPLE_RATE // CONDITIONING_SAMPLE_RATE
    return dict(
        text_ids=text_ids,
        auto_latent=torch.randn(1, d_ar, generator=generator),  # (1, d_ar)
        diffusion_latent=torch.randn(1, 2 * channels, generator=generator),  # (1, 2C)
        codes=torch.randint(0, 8192, (2, probe_length), generator=generator),  # (2, Tp), no stop token
        ar_latents=torch.randn(1, probe_length, d_ar, generator=generator),  # (1, Tp, d_ar) diffusion input
        # A plausible log-mel level (the vocoder's silence is -11.5) with some texture.
        mel=torch.randn(1, 100, frames, generator=generator) - 5.0,  # (1, 100, F)
        vocoder_noise=torch.randn(1, noise_dim, frames + 10, generator=generator),  # +10: inference's zero pad
        diffusion_seed=PROBE_SEED + 1,
        # Our diffuse() draws from a generator seeded with this; the reference from the global RNG.
        reference_diffusion_seed=stage_seed(PROBE_SEED + 1, "diffusion"),
        diffusion_steps=options.diffusion_steps,
    )


# ---------------------------------------------------------------------------------------------
# Worker: one side, in its own process


def ar_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: the transformer blocks, the norms and the mel head (checkpoint names).

    Embedding tables are left out: a step reads one row of each.
    """
    total, seen = 0, set()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        # Not weights: our KV cache buffers, the reference's causal-mask buffers (attn.bias).
        if "kv_cache" in name or name.endswith(("attn.bias", "attn.masked_bias")):
            continue
        if name.startswith(("gpt.h.", "gpt.ln_f.", "final_norm.", "mel_head.")) and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def run_worker(spec_path: Path, out_dir: Path) -> None:
    """Load one side, warm it up, run the timed synthesis, run the probes, write result.json + outputs.pt."""
    spec = json.loads(Path(spec_path).read_text())
    side = Side(**{**spec["side"], "stages": tuple(spec["side"]["stages"])})
    options = spec["options"]
    probe = torch.load(spec["probe_path"], weights_only=True)
    config = models_config(Path(options["models_dir"]))
    device = torch.device(options["device"])
    torch.set_grad_enabled(False)

    start = time.perf_counter()
    runner = ReferenceSide(side, options, config) if side.kind == "reference" else OurSide(side, options)
    load_seconds = time.perf_counter() - start

    warmup_seconds = None
    if options["warmup"]:
        start = time.perf_counter()
        runner.synthesize(probe, StageTimer(device), code_length=min(8, options["code_length"]), diffusion_steps=2)
        warmup_seconds = time.perf_counter() - start

    timer = StageTimer(device)
    outputs = runner.synthesize(probe, timer, code_length=options["code_length"], diffusion_steps=None)
    probes = runner.probe(probe) if spec.get("probe", True) else {}
    if options.get("quality") and side.kind == "ours" and spec.get("probe", True):
        outputs.update(runner.quality_clips(probe))  # untimed, after the timed run

    result = dict(
        side=dataclasses.asdict(side),
        settings=runner.settings_summary(),
        load_seconds=load_seconds,
        warmup_seconds=warmup_seconds,  # includes torch.compile's compilation when --compile
        stage_seconds={name: timer.seconds[name] for name in side.stages},
        ar_steps=outputs["ar_steps"],
        ar_weight_bytes=runner.ar_weight_bytes(),
        audio_seconds=outputs["wav"].shape[-1] / SAMPLE_RATE if "wav" in outputs else None,
        peak_memory_bytes=peak_memory_bytes(device),
        memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "peak RSS",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    torch.save({"outputs": {k: v for k, v in outputs.items() if torch.is_tensor(v)}, "probes": probes}, out_dir / "outputs.pt")


class ReferenceSide:
    """The reference's stages (reference_runner), behind the worker's interface."""

    def __init__(self, side: Side, options: dict, config: dict):
        from tutortoietts.devtools import reference_runner

        self.runner = reference_runner
        self.side, self.options = side, options
        self.models = reference_runner.load_reference(Path(options["models_dir"]), config, options["device"], side.kv_cache)

    def settings_summary(self) -> dict:
        return dict(num_samples=self.options["num_samples"], diffusion_steps=self.options["diffusion_steps"],
                    sampler="ddpm", cond_free=False, precision="fp32", kv_cache=self.side.kv_cache)

    def ar_weight_bytes(self) -> int:
        return ar_weight_bytes(self.models.autoregressive)

    def synthesize(self, probe: dict, timer: StageTimer, *, code_length: int, diffusion_steps: int | None) -> dict:
        steps = diffusion_steps or self.options["diffusion_steps"]
        if self.side.stages == ("autoregressive",):
            return self._autoregressive_only(probe, timer, code_length)
        return self.runner.run_reference(
            self.models, probe["text_ids"], probe["auto_latent"], probe["diffusion_latent"],
            num_samples=self.options["num_samples"], code_length=code_length, diffusion_steps=steps,
            cond_free=False, seed=self.options["seed"], timer=timer,
        )

    def _autoregressive_only(self, probe: dict, timer: StageTimer, code_length: int) -> dict:
        import torch.nn.functional as F

        device = self.models.device
        text = F.pad(probe["text_ids"].to(device), (0, 1))
        torch.manual_seed(self.options["seed"])
        with timer.stage("autoregressive"):
            codes = self.models.autoregressive.inference_speech(
                probe["auto_latent"].to(device), text, do_sample=True, top_p=0.8, temperature=0.8,
                num_return_sequences=self.options["num_samples"], length_penalty=1.0, repetition_penalty=2.0,
                max_generate_length=code_length,
            )
        return dict(codes=codes.cpu(), ar_steps=codes.shape[1])

    def probe(self, probe: dict) -> dict:
        if self.side.stages == ("autoregressive",):
            return {}
        return self.runner.probe_reference(self.models, probe)


def our_synthesis(tts, text: str, voice, settings, seed: int, timer: StageTimer) -> dict:
    """One synthesis through the engine's own stage sequence (what generate runs), timed by `timer`."""
    timer.decode_steps = 0
    ar = tts.autoregressive_stage(text, voice, settings, seed, instruments=timer)
    clip = tts.audio_stage(ar, voice, settings, seed, instruments=timer)
    return dict(codes=ar.codes, scores=ar.scores, latents=ar.latents, mel=clip.mel,
                wav=clip.samples.reshape(1, 1, -1), ar_steps=timer.decode_steps)


class OurSide:
    """Our engine through the Tortoise facade, stage by stage, as synthesize() runs them."""

    def __init__(self, side: Side, options: dict):
        from tutortoietts.engine.pipeline import Tortoise
        from tutortoietts.settings import load_preset

        self.side, self.options = side, options
        exact = side.preset == "ultra_fast"
        overrides = dict(max_mel_tokens=options["code_length"], precision=side.precision)
        if exact:
            # The reference's ultra_fast, at the bench's sample count and step count.
            overrides.update(num_autoregressive_samples=options["num_samples"], diffusion_iterations=options["diffusion_steps"])
        elif options.get("quick"):
            overrides.update(num_autoregressive_samples=options["num_samples"], diffusion_iterations=options["diffusion_steps"])
        self.settings = load_preset(side.preset, **overrides)
        self.tts = Tortoise.load(Path(options["models_dir"]), device=options["device"], precision=side.precision)
        if options.get("compile"):
            self.compile_decode()

    def compile_decode(self) -> None:
        """torch.compile the autoregressive decode step (CUDA graphs via reduce-overhead), if the engine offers it."""
        model = self.autoregressive_model()
        step = getattr(model, "decode_one_token", None)
        if step is None:
            raise UserError("--compile: this engine's autoregressive model has no decode_one_token step to compile")
        mode = "reduce-overhead" if torch.device(self.options["device"]).type == "cuda" else "default"
        model.decode_one_token = torch.compile(step, mode=mode, fullgraph=False, dynamic=False)

    def autoregressive_model(self) -> torch.nn.Module:
        return autoregressive_network(self.tts)

    def settings_summary(self) -> dict:
        summary = self.settings.to_dict()
        summary["loaded_precision"] = str(getattr(self.tts, "precision", self.side.precision))
        return summary

    def ar_weight_bytes(self) -> int:
        return ar_weight_bytes(self.autoregressive_model())

    def voice(self, probe: dict):
        from tutortoietts.engine.pipeline import VoiceLatents

        return VoiceLatents(autoregressive=probe["auto_latent"], diffusion=probe["diffusion_latent"])

    def synthesize(self, probe: dict, timer: StageTimer, *, code_length: int, diffusion_steps: int | None) -> dict:
        settings = self.settings.replace(max_mel_tokens=code_length, diffusion_iterations=diffusion_steps)
        return our_synthesis(self.tts, self.options["text"], self.voice(probe), settings, self.options["seed"], timer)

    def quality_clips(self, probe: dict) -> dict:
        """`--quality`: the directive's four texts through the whole sequence, same voice, seed and code length."""
        from tutortoietts.devtools.research import DIRECTIVE_TEXTS

        settings = self.settings.replace(max_mel_tokens=self.options["code_length"])
        timer = StageTimer(torch.device(self.options["device"]))
        return {f"quality:{name}": our_synthesis(self.tts, text, self.voice(probe), settings, self.options["seed"], timer)["wav"]
                for name, text in DIRECTIVE_TEXTS.items()}

    def probe(self, probe: dict) -> dict:
        """Fixed-input outputs: teacher-forced latents/logits, CLVP scores, a diffused mel, a vocoded wave, sampled codes."""
        tts, voice = self.tts, self.voice(probe)
        text_ids, codes = probe["text_ids"], probe["codes"]
        latents = tts.code_latents(text_ids, codes, voice)  # (k, Tp, d)
        with torch.inference_mode():
            logits = self.autoregressive_model().mel_head(latents.to(tts.device, tts.dtype)).float().cpu()  # (k, Tp, V)
        scores = tts.rerank(text_ids, codes)
        # The diffusion path with this side's sampler, steps and guidance, from fixed latents and seed.
        settings = self.settings.replace(diffusion_iterations=self.options["diffusion_steps"]) if self.side.preset == "ultra_fast" else self.settings
        mel = tts.diffuse(probe["ar_latents"], voice, settings, seed=probe["diffusion_seed"])
        wav = tts.vocode(probe["mel"], noise=probe["vocoder_noise"])
        sampled = tts.sample_codes(text_ids, voice, self.settings.replace(num_autoregressive_samples=2, max_mel_tokens=codes.shape[1]), PROBE_SEED)
        return dict(latents=latents.float().cpu(), logits=logits.float().cpu(), scores=scores.float().cpu(),
                    mel=mel.float().cpu(), wav=wav.float().cpu(), sampled_codes=sampled.cpu())


# ---------------------------------------------------------------------------------------------
# Orchestration


def run_side_subprocess(side: Side, options: BenchOptions, probe_path: Path, out_dir: Path, probe: bool) -> dict:
    spec = dict(side=dataclasses.asdict(side), options=_options_dict(options), probe_path=str(probe_path), probe=probe)
    spec_path = out_dir / "spec.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    # The worker must import this very package, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "tutortoietts.devtools.bench", str(spec_path), str(out_dir)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"bench side {side.name!r} failed (exit {done.returncode}):\n{tail}")
    result = json.loads((out_dir / "result.json").read_text())
    result["files"] = torch.load(out_dir / "outputs.pt", weights_only=True)
    return result


def _options_dict(options: BenchOptions) -> dict:
    values = dataclasses.asdict(options)
    values["models_dir"] = str(options.models_dir)
    return values


def run_bench(options: BenchOptions, progress=None) -> dict:
    """Run every side (alternating over repeats), aggregate, and return the JSON-ready report."""
    say = progress or (lambda message: None)
    if options.code_length < 2 or options.num_samples < 1 or options.repeats < 1:
        raise UserError("bench needs --codes >= 2, --samples >= 1 and --repeats >= 1")
    if torch.device(options.device).type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch on this machine")
    models_dir = Path(options.models_dir)
    if not (models_dir / "autoregressive.pth").exists():
        raise UserError(f"{models_dir} has no autoregressive.pth; write a set with `tutortoietts models init-random`")
    config = models_config(models_dir)
    sides = choose_sides(options)

    prepare_weight_copies(sides, options, say)
    say("measuring memory bandwidth")
    bandwidth = measure_bandwidth(options.device)
    runs: dict[str, list[dict]] = {side.name: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="tutortoietts-bench-") as scratch:
        scratch = Path(scratch)
        probe_path = scratch / "probe.pt"
        torch.save(make_probe(options, config), probe_path)
        for repeat in range(options.repeats):
            for side in sides:
                say(f"run {repeat + 1}/{options.repeats}: {side.name}")
                runs[side.name].append(run_side_subprocess(side, options, probe_path, scratch / f"{repeat}-{side.name.replace(' ', '_')}", probe=repeat == 0))
    return summarise(options, config, sides, runs, bandwidth)


def prepare_weight_copies(sides: list[Side], options: BenchOptions, say) -> None:
    """Write the cast weight copies our reduced-precision CPU sides load, outside any measurement.

    A user pays the cast once, on the first run; timing and peak memory should show every run
    after it, as the reference's are shown with its weights already downloaded.
    """
    if torch.device(options.device).type != "cpu":
        return
    for precision in sorted({side.precision for side in sides if side.kind == "ours" and side.precision in ("bf16", "auto")}):
        say(f"preparing {precision} weight copies (first run only)")
        script = "import sys; from tutortoietts.engine import Tortoise; Tortoise.load(sys.argv[1], 'cpu', sys.argv[2])"
        subprocess.run([sys.executable, "-c", script, str(options.models_dir), precision], check=True)


def sampler_comparison(options: BenchOptions, reference_steps: int = 200) -> dict:
    """The DPM-Solver++ check: RMS log-mel distance of fast samplers to a many-step DDIM from the same x_T.

    One random latent sequence of --codes frames through our diffusion decoder in bf16, guidance
    k=2. On random weights this says how well each solver tracks the probability-flow solution, not
    how the speech sounds.
    """
    from tutortoietts.engine.checkpoints import load_network
    from tutortoietts.devtools.fidelity import sampler_fidelity

    device = torch.device(options.device)
    config = models_config(options.models_dir)["diffusion_decoder"]
    net = load_network("diffusion_decoder", options.models_dir, device=device, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    latents = torch.randn(1, options.code_length, config["in_latent_channels"], generator=generator)
    cond = torch.randn(1, 2 * config["model_channels"], generator=generator)
    candidates = {
        "dpmpp2m 10": ("dpmpp2m", 10), "dpmpp2m 15": ("dpmpp2m", 15), "ddim 15": ("ddim", 15),
        f"ddpm {options.diffusion_steps} (reference)": ("ddpm", options.diffusion_steps),
    }
    with torch.inference_mode():
        distances = sampler_fidelity(net, latents.to(device, torch.bfloat16), cond.to(device, torch.bfloat16), candidates,
                                     reference=("ddim", reference_steps), cond_free=True, cond_free_k=2.0)
    return dict(reference=f"ddim {reference_steps}", precision="bf16", rms_log_mel_distance=distances)


def summarise(options: BenchOptions, config: dict, sides: list[Side], runs: dict[str, list[dict]], bandwidth: float) -> dict:
    """Best-of-repeats seconds per stage, speedups against the reference with its KV cache, fidelity."""
    baseline_name = "reference kv-cache"
    report_sides = {}
    for side in sides:
        side_runs = runs[side.name]
        stages = {stage: min(run["stage_seconds"][stage] for run in side_runs) for stage in side.stages}
        first = side_runs[0]
        ar_seconds = stages["autoregressive"]
        steps_per_second = first["ar_steps"] / ar_seconds
        total = sum(stages.values()) if set(side.stages) in (set(STAGES), set(HIFI_STAGES)) else None
        report_sides[side.name] = dict(
            kind=side.kind, preset=side.preset, precision=side.precision, kv_cache=side.kv_cache if side.kind == "reference" else None,
            settings=first["settings"], stage_seconds=stages, total_seconds=total,
            load_seconds=first["load_seconds"], warmup_seconds=first["warmup_seconds"],
            ar_steps=first["ar_steps"], ar_steps_per_second=steps_per_second,
            ar_weight_bytes=first["ar_weight_bytes"],
            achieved_bandwidth_bytes_per_second=first["ar_weight_bytes"] * steps_per_second,
            audio_seconds=first["audio_seconds"],
            real_time_factor=(total / first["audio_seconds"]) if total and first["audio_seconds"] else None,
            # Codes of all candidates per second; no side streams, so its first audio is its whole clip.
            tokens_per_second=first["settings"].get("num_autoregressive_samples", first["settings"].get("num_samples", 1))
            * first["ar_steps"] / ar_seconds,
            time_to_first_audio_seconds=total,
            peak_memory_bytes=max(run["peak_memory_bytes"] for run in side_runs), memory_kind=first["memory_kind"],
        )
    baseline = report_sides.get(baseline_name)
    if baseline:
        for name, entry in report_sides.items():
            entry["speedup"] = {stage: baseline["stage_seconds"][stage] / seconds
                                for stage, seconds in entry["stage_seconds"].items() if stage in baseline["stage_seconds"]}
            if entry["total_seconds"]:
                entry["speedup"]["end_to_end"] = baseline["total_seconds"] / entry["total_seconds"]
                entry["peak_memory_vs_reference"] = entry["peak_memory_bytes"] / baseline["peak_memory_bytes"]
    return dict(
        machine=dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                     device=options.device, device_name=_device_name(options.device), cpu_threads=torch.get_num_threads(),
                     memory_bandwidth_bytes_per_second=bandwidth),
        options=_options_dict(options),
        config={stem: dict(kwargs) for stem, kwargs in config.items()},
        sides=report_sides,
        fidelity=fidelity(runs),
        targets=targets(report_sides),
        weights=weights_origin(options.models_dir),
        **({"quality": side_quality(runs)} if options.quality else {}),
    )


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def fidelity(runs: dict[str, list[dict]]) -> dict:
    """Probe differences: ours fp32 vs the reference; every other side of ours vs ours fp32."""
    probes = {name: side_runs[0]["files"]["probes"] for name, side_runs in runs.items() if side_runs[0]["files"]["probes"]}
    report = {}
    exact = probes.get("ours fp32")
    reference = probes.get("reference kv-cache")
    if exact and reference:
        report["ours fp32 vs reference"] = {
            "latents_max_diff": _max_diff(exact["latents"], reference["latents"]),
            "logits_max_diff": _max_diff(exact["logits"], reference["logits"]),
            "clvp_scores_max_diff": _max_diff(exact["scores"], reference["scores"]),
            "mel_rms_diff": _rms(exact["mel"], reference["mel"]),  # DDPM, same seed and noise order
            "mel_max_diff": _max_diff(exact["mel"], reference["mel"]),
            "vocoder_wave_max_diff": _max_diff(exact["wav"], reference["wav"]),
            "vocoder_wave_rms_diff": _rms(exact["wav"], reference["wav"]),
        }
    for name, probe in probes.items():
        if name.startswith("reference") or name == "ours fp32" or not exact:
            continue
        agreement = (probe["sampled_codes"] == exact["sampled_codes"]).float().mean().item()
        entry = {
            "latents_max_diff": _max_diff(probe["latents"], exact["latents"]),
            "logits_max_diff": _max_diff(probe["logits"], exact["logits"]),
            "code_agreement": agreement,
            "clvp_scores_max_diff": _max_diff(probe["scores"], exact["scores"]),
            "mel_rms_diff": _rms(probe["mel"], exact["mel"]),  # log-mel units; the fp32 path is the ultra_fast DDPM
            "vocoder_wave_max_diff": _max_diff(probe["wav"], exact["wav"]),
            "vocoder_wave_rms_diff": _rms(probe["wav"], exact["wav"]),
        }
        report[f"{name} vs ours fp32"] = entry
    return report


def targets(sides: dict) -> dict:
    """The issue's targets, each as measured value, goal and whether it was met (None if not measured)."""
    result = {}
    reference, exact, bf16, v2 = (sides.get(n) for n in ("reference kv-cache", "ours fp32", "ours bf16", "ours ultra_fast_v2"))
    if reference and exact:
        slowest = min(exact["speedup"].get(stage, 0) for stage in STAGES)
        result["fp32: no stage slower than reference (min stage speedup >= 1)"] = dict(value=slowest, goal=1.0, met=slowest >= 1.0)
    if reference and bf16:
        result["bf16: autoregressive speedup >= 2"] = dict(value=bf16["speedup"]["autoregressive"], goal=2.0, met=bf16["speedup"]["autoregressive"] >= 2.0)
        result["bf16: diffusion speedup >= 4"] = dict(value=bf16["speedup"]["diffusion"], goal=4.0, met=bf16["speedup"]["diffusion"] >= 4.0)
    if reference and v2:
        result["ultra_fast_v2: end-to-end speedup >= 5"] = dict(value=v2["speedup"]["end_to_end"], goal=5.0, met=v2["speedup"]["end_to_end"] >= 5.0)
        ratio = v2["peak_memory_vs_reference"]
        result["ultra_fast_v2: peak memory <= 50% of reference"] = dict(value=ratio, goal=0.5, met=ratio <= 0.5)
    return result


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]), Path(sys.argv[2]))
