"""The directive's research studies on one engine: shared inputs, weights provenance, speculation, report tables.

`bench --drop-layers/--ablate` (devtools/ablation.py), `bench --speculative` and `bench --quality`
come through here. Every report names the weights it ran on (checkpoints.weights_origin): on
random weights the quality columns are printed, with QUALITY_WARNING, and mean nothing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tutortoietts.engine.limits import SAMPLE_RATE
from tutortoietts.errors import UserError

DEFAULT_TEXT = (
    "The old lighthouse keeper climbed the stairs each evening, counting every step, "
    "and lit the lamp before the fog rolled in."
)
# The directive's benchmark test suite: simple, complex pronunciation, long form, emotional. The
# long form is one chunk's worth (the engine speaks at most one chunk per call), not 5 minutes.
DIRECTIVE_TEXTS = {
    "simple": "Hello world.",
    "complex pronunciation": "The pharmaceutical pseudoephedrine.",
    "long form": (
        "It was late in the autumn when the letters began to arrive, one each morning, always in the same "
        "careful hand, always without a name. Margaret read them at the kitchen table while the kettle came "
        "to the boil, and by the third week she had stopped pretending that she did not wait for them."
    ),
    "emotional": "Oh my god! This is amazing!",
}
QUALITY_WARNING = (
    "these weights are not the official ones: the audio is noise, so MCD, PESQ, STOI and log-mel "
    "distance measure nothing about speech quality here; run the study on the official weights"
)
DEFAULT_SPECULATION_K = (2, 4, 8)


@dataclass
class StudyInputs:
    """What a study runs on: one engine, one text, one voice (the random latent generator's, seeded)."""

    models_dir: Path
    device: str = "cpu"
    precision: str = "fp32"
    preset: str = "ultra_fast_v2"
    text: str = DEFAULT_TEXT
    seed: int = 0
    num_samples: int = 4  # candidates sampled per run
    code_length: int = 64  # max_mel_tokens: random weights never stop, so every run decodes this many
    diffusion_steps: int | None = None  # None: the preset's
    quality: bool = False  # also synthesize audio and measure it (slow: the whole stage sequence)
    repeats: int = 1  # timed runs; the best is reported

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["models_dir"] = str(self.models_dir)
        return values


@dataclass
class Study:
    tts: object
    voice: object
    settings: object
    text_ids: torch.Tensor
    origin: dict


def prepare(inputs: StudyInputs) -> Study:
    """Load the engine and resolve the settings, the voice and the text once for a study."""
    from tutortoietts.engine.checkpoints import find_models_dir, weights_origin
    from tutortoietts.engine.pipeline import Tortoise
    from tutortoietts.settings import load_preset

    folder = find_models_dir(inputs.models_dir)
    settings = load_preset(inputs.preset, num_autoregressive_samples=inputs.num_samples,
                           max_mel_tokens=inputs.code_length, diffusion_iterations=inputs.diffusion_steps,
                           precision=inputs.precision, autoregressive_batch_size=inputs.num_samples)
    settings = settings.for_text(inputs.text)  # one text: "auto" diffusion steps resolved for it
    tts = Tortoise.load(folder, device=inputs.device, precision=inputs.precision)
    voice = tts.random_voice(inputs.seed)
    return Study(tts, voice, settings, tts.tokenize(inputs.text), weights_origin(folder))


def decode_steps(codes: torch.Tensor, stop: int) -> int:
    """Decode steps a sampling loop ran for these stop-padded codes: until its last row stopped."""
    is_stop = codes == stop
    length = codes.shape[1]
    ends = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1) + 1, length)
    return int(ends.max())


def quality_of(reference_clip, clip) -> dict:
    """metrics.compare of two clips, as a dict."""
    from tutortoietts.devtools.metrics import compare

    if reference_clip.sample_rate != clip.sample_rate:
        raise UserError("cannot compare clips of different sample rates")
    return compare(reference_clip.samples.numpy(), clip.samples.numpy(), clip.sample_rate).to_dict()


METRICS = ("mcd", "pesq", "stoi", "log_mel")


def side_quality(runs: dict[str, list[dict]], reference: str = "ours fp32", sample_rate: int = SAMPLE_RATE) -> dict:
    """`bench --quality`: every other side of ours against the exact fp32 side, per directive text and
    averaged: {side: {"mcd", "pesq", "stoi", "log_mel", "texts": {text: metrics.Quality as a dict}}}."""
    from tutortoietts.devtools.metrics import compare

    clips = {
        name: {key.split(":", 1)[1]: wave for key, wave in side_runs[0]["files"]["outputs"].items() if key.startswith("quality:")}
        for name, side_runs in runs.items()
    }
    exact = clips.get(reference)
    if not exact:
        return {"note": f"--quality compares with the side {reference!r}, which did not run"}
    result = {}
    for name, texts in clips.items():
        if name == reference or not texts:
            continue
        per_text = {text: compare(exact[text].reshape(-1).numpy(), wave.reshape(-1).numpy(), sample_rate).to_dict()
                    for text, wave in texts.items()}
        means = {}
        for metric in METRICS:
            values = [entry[metric] for entry in per_text.values() if entry[metric] is not None]
            means[metric] = sum(values) / len(values) if values else None
        result[name] = {**means, "texts": per_text}
    return result


# ---------------------------------------------------------------------------------------------
# Speculative decoding


def make_draft(tts, voice, draft_layers: int | None, draft_models: Path | None, seed: int):
    """The draft: the model's own first `draft_layers` blocks (default half of them), or a checkpoint folder."""
    from tutortoietts.engine import speculative

    model = tts.autoregressive
    total = len(model.gpt.h)
    if draft_layers is not None and not 1 <= draft_layers <= total:
        raise UserError(f"a self-speculation draft takes 1 to {total} layers of this model, got {draft_layers}")
    if draft_models is None:
        return speculative.SelfDraft(draft_layers or max(1, total // 2))
    if draft_layers is not None:
        raise UserError("give either --draft-layers (self-speculation) or --draft-models (a draft checkpoint), not both")
    from tutortoietts.engine.checkpoints import load_network, read_config

    folder = Path(draft_models)
    if not (folder / "autoregressive.pth").is_file():
        raise UserError(f"no autoregressive.pth in the draft folder {folder}")
    draft = load_network("autoregressive", folder, read_config(folder), tts.device, tts.dtype).eval()
    width = draft.model_dim
    if width == model.model_dim:
        cond = voice.autoregressive
    else:
        # The study's voice comes from the full model's random latent generator; a draft of another
        # width needs its own latent, here a seeded draw (with a real voice: its encoder on the clips).
        cond = torch.randn(1, width, generator=torch.Generator().manual_seed(seed))
    return speculative.ModelDraft(draft, cond.to(tts.device, tts.dtype), name=f"checkpoint {folder}")


def timed(function, device) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


@torch.inference_mode()
def speculation_study(inputs: StudyInputs, ks=DEFAULT_SPECULATION_K, draft_layers: int | None = None,
                      draft_models: Path | None = None, progress=None) -> dict:
    """Plain sampling against speculative sampling at each k: acceptance rate, codes per second, speedup."""
    from tutortoietts.engine import speculative

    say = progress or (lambda message: None)
    study = prepare(inputs)
    tts, voice, settings = study.tts, study.voice, study.settings
    model = tts.autoregressive
    cond, text_ids = voice.autoregressive.to(tts.device, tts.dtype), study.text_ids.to(tts.device)
    draft = make_draft(tts, voice, draft_layers, draft_models, inputs.seed)
    sampling = dict(num_samples=settings.num_autoregressive_samples, max_mel_tokens=settings.max_mel_tokens,
                    temperature=settings.temperature, top_p=settings.top_p,
                    repetition_penalty=settings.repetition_penalty, batch_size=settings.batch_size())

    def generator():
        return torch.Generator(tts.device).manual_seed(inputs.seed)

    def plain():
        return model.sample(cond, text_ids, generator=generator(), **sampling)

    def speculative_run(k: int, stats):
        return speculative.sample(model, cond, text_ids, draft=draft, k=k, generator=generator(), stats=stats, **sampling)

    say("warm-up")
    plain()  # at full size: first-call costs (allocations, kernel choice) stay out of the timing
    speculative_run(ks[0], speculative.SpeculationStats())
    # Round-robin over plain sampling and every k for each repeat (best of the repeats), so drifting
    # machine load hits them alike.
    best: dict = {}
    outputs: dict = {}
    for repeat in range(inputs.repeats):
        for k in (None, *ks):
            say(f"run {repeat + 1}/{inputs.repeats}: " + ("plain sampling" if k is None else f"speculative, k = {k}"))
            stats = speculative.SpeculationStats()
            out, seconds = timed(plain if k is None else (lambda: speculative_run(k, stats)), tts.device)
            outputs[k] = (out, stats)
            best[k] = seconds if k not in best else min(best[k], seconds)
    codes, plain_seconds = outputs[None][0], best[None]
    steps = decode_steps(codes, model.stop_mel_token)
    plain_rate = codes.shape[0] * steps / plain_seconds
    results = []
    for k in ks:
        out, stats = outputs[k]
        rate = out.shape[0] * decode_steps(out, model.stop_mel_token) / best[k]
        results.append({"k": k, "seconds": best[k], "codes_per_second": rate, "speedup": rate / plain_rate,
                        **stats.to_dict()})
    return {
        "weights": study.origin,
        "inputs": inputs.to_dict(),
        "settings": settings.to_dict(),
        "draft": draft.name,
        "layers": len(model.gpt.h),
        "plain": {"seconds": plain_seconds, "decode_steps": steps, "codes_per_second": plain_rate},
        "speculative": results,
        "note": "speculative sampling is exact: the codes have the full model's distribution, so quality is "
                "unchanged by construction; acceptance on random weights says nothing about the official ones",
    }


# ---------------------------------------------------------------------------------------------
# Report tables (rich), shared by `bench` and anything else that prints these studies


def weights_line(origin: dict) -> str:
    if origin["kind"] == "random":
        return f"weights: RANDOM ({origin['detail']}; fingerprint {origin['fingerprint']})"
    hashes = ", ".join(f"{name} {digest[:12]}" for name, digest in (origin.get("sha256") or {}).items())
    return f"weights: {origin['kind'].upper()} ({origin['detail']}); sha256 {hashes}"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def quality_cells(quality: dict | None) -> list[str]:
    if not quality:
        return ["-"] * 4
    return [_num(quality.get("mcd"), 2), _num(quality.get("pesq"), 2), _num(quality.get("stoi"), 3), _num(quality.get("log_mel"), 3)]


def ablation_table(report: dict):
    from rich.table import Table

    random = report["quality_warning"] is not None
    title = f"layer ablation ({report['layers']} blocks, {report['full']['codes_per_second']:.1f} codes/s full)"
    table = Table(title=title)
    columns = ["skipped", "kept", "KL nats/code", "top-1 agree", "codes/s", "speedup/step",
               "MCD" + ("*" if random else ""), "PESQ" + ("*" if random else ""), "STOI" + ("*" if random else ""),
               "log-mel" + ("*" if random else "")]
    for column in columns:
        table.add_column(column, justify="left" if column == "skipped" else "right")
    for entry in report["variants"]:
        table.add_row(entry["spec"], str(entry["layers_kept"]), _num(entry["kl_nats_per_code"]),
                      _num(entry["top1_agreement"]), _num(entry["codes_per_second"], 1), _num(entry["speedup_per_step"], 2),
                      *quality_cells(entry["quality"]))
    return table


def speculation_table(report: dict):
    from rich.table import Table

    plain = report["plain"]
    table = Table(title=f"speculative sampling, draft: {report['draft']} (plain: {plain['codes_per_second']:.1f} codes/s)")
    for column in ("k", "acceptance", "codes/verify", "codes/s", "speedup", "seconds"):
        table.add_column(column, justify="right")
    for entry in report["speculative"]:
        table.add_row(str(entry["k"]), _num(entry["acceptance_rate"]), _num(entry["codes_per_verification"], 2),
                      _num(entry["codes_per_second"], 1), _num(entry["speedup"], 2), _num(entry["seconds"], 2))
    return table


def side_quality_table(report: dict):
    """`bench --quality`: each fast side against ours fp32, averaged over the directive's four texts."""
    from rich.table import Table

    random = report.get("weights", {}).get("kind") != "official"
    mark = "*" if random else ""
    table = Table(title="quality against ours fp32, mean of the directive's four texts" + (" (* random weights: meaningless)" if random else ""))
    for column in ("side", "MCD dB" + mark, "PESQ wb" + mark, "STOI" + mark, "log-mel" + mark):
        table.add_column(column, justify="left" if column == "side" else "right")
    for name, entry in report["quality"].items():
        if isinstance(entry, dict):
            table.add_row(name, *quality_cells(entry))
    return table


def latency_table(report: dict):
    """Per side: time to first audio (no side streams yet: the whole clip) and codes per second."""
    from rich.table import Table

    table = Table(title="latency and autoregressive throughput")
    for column in ("side", "time to first audio s", "codes/s (all candidates)"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for name, side in report["sides"].items():
        table.add_row(name, _num(side.get("time_to_first_audio_seconds"), 2), _num(side.get("tokens_per_second"), 1))
    return table
