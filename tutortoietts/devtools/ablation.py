"""Layer ablation: the autoregressive model with some blocks skipped (identity), measured against the full model.

For each layer set (a spec such as "20-29", "every-3rd", "0,5,7" or "last-6"), on the same text,
voice, seed and settings as the full model:
- teacher-forced KL(full || ablated) of the next-code distributions (temperature 1, nats per
  code), over the full model's own sampled codes up to each row's stop;
- top-1 agreement: how often both put the same code first on those positions;
- the autoregressive stage's speed (codes per second) and the speedup;
- with `quality`, the metrics (devtools/metrics.py) of the ablated model's audio against the
  full model's, the whole stage sequence run for each.
The ablated model runs through the engine's own path (Settings.ar_layers, which generate uses
only when a preset sets it: experimental).
"""

from __future__ import annotations

import re
import time

import torch

from tutortoietts.devtools.research import QUALITY_WARNING, StudyInputs, decode_steps, prepare, quality_of
from tutortoietts.errors import UserError

EVERY = re.compile(r"every-(\d+)(?:st|nd|rd|th)?")
EDGE = re.compile(r"(first|last)-(\d+)")


def parse_layers(spec: str, total: int) -> tuple[int, ...]:
    """The blocks a spec skips, sorted: "20-29", "every-3rd" (blocks 3, 6, 9, ... counting from 1),
    "first-4", "last-10", "5", or several joined by commas ("0-3,every-5th")."""
    skipped: set[int] = set()
    for part in (piece.strip().lower() for piece in spec.split(",")):
        if not part:
            continue
        if match := EVERY.fullmatch(part):
            step = int(match.group(1))
            if step < 2:
                raise UserError(f"layer spec {part!r}: every-N needs N of 2 or more (every-1st would skip them all)")
            skipped.update(index for index in range(total) if (index + 1) % step == 0)
        elif match := EDGE.fullmatch(part):
            count = int(match.group(2))
            skipped.update(range(count) if match.group(1) == "first" else range(total - count, total))
        elif re.fullmatch(r"\d+(-\d+)?", part):
            low, _, high = part.partition("-")
            low, high = int(low), int(high or low)
            if low > high:
                raise UserError(f"layer spec {part!r}: the range runs backwards")
            skipped.update(range(low, high + 1))
        else:
            raise UserError(f"layer spec {part!r} not understood: use A-B, N, every-Nth, first-N, last-N, joined by commas")
    outside = sorted(index for index in skipped if not 0 <= index < total)
    if outside:
        raise UserError(f"layer spec {spec!r} names block {outside[0]}, but the model has blocks 0 to {total - 1}")
    if not skipped:
        raise UserError(f"layer spec {spec!r} skips no block")
    if len(skipped) == total:
        raise UserError(f"layer spec {spec!r} skips every block; keep at least one")
    return tuple(sorted(skipped))


def sweep_specs(total: int) -> list[str]:
    """The --ablate sweep for a model of `total` blocks: the directive's "layers 20-29" question
    (the last third), the last sixth, the first sixth, every 3rd and every 2nd block."""
    third, sixth = max(1, total // 3), max(1, total // 6)
    last_third = f"{total - third}-{total - 1}" if third > 1 else str(total - 1)
    candidates = [last_third, f"last-{sixth}", f"first-{sixth}", "every-3rd", "every-2nd"]
    specs, seen = [], set()
    for spec in candidates:
        try:
            skipped = parse_layers(spec, total)
        except UserError:
            continue  # e.g. every-3rd of a 2-block model skips nothing
        if skipped not in seen:
            seen.add(skipped)
            specs.append(spec)
    return specs


def kept_layers(skipped: tuple[int, ...], total: int) -> tuple[int, ...]:
    return tuple(index for index in range(total) if index not in skipped)


@torch.inference_mode()
def teacher_forced_logits(tts, text_ids: torch.Tensor, voice, codes: torch.Tensor) -> torch.Tensor:
    """Next-code logits (fp32) at every position of given codes, the model as it is now set: (k, T, V)."""
    model = tts.autoregressive
    latents = model.latents(voice.autoregressive.to(tts.device, tts.dtype), text_ids.to(tts.device), codes.to(tts.device))
    return model.mel_head(latents).float().cpu()


def spoken_mask(codes: torch.Tensor, stop: int) -> torch.Tensor:
    """(k, T) True up to and including each row's first stop code (after it, rows are padding)."""
    is_stop = codes == stop
    before = (is_stop.int().cumsum(dim=1) - is_stop.int()) == 0
    return before


def compare_logits(full: torch.Tensor, ablated: torch.Tensor, mask: torch.Tensor) -> dict:
    """KL(full || ablated) in nats per code and top-1 agreement, over the masked positions."""
    log_p = full.log_softmax(dim=-1)[mask]  # (N, V)
    log_q = ablated.log_softmax(dim=-1)[mask]
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (N,)
    agree = (full.argmax(dim=-1)[mask] == ablated.argmax(dim=-1)[mask]).float()
    return {"kl_nats_per_code": kl.mean().item(), "top1_agreement": agree.mean().item(), "positions": int(mask.sum())}


def timed_sampling(tts, text_ids, voice, settings, seed: int) -> tuple[torch.Tensor, float]:
    """The engine's candidate sampling, timed: (raw codes, seconds)."""
    start = time.perf_counter()
    codes = tts.sample_raw_codes(text_ids, voice, settings, seed)
    if tts.device.type == "cuda":
        torch.cuda.synchronize(tts.device)
    return codes, time.perf_counter() - start


def ablation_study(inputs: StudyInputs, specs: list[str] | None = None, sweep: bool = False, progress=None) -> dict:
    """Every spec, and with `sweep` (or no spec) sweep_specs' too, against the full model; a JSON-ready report."""
    from tutortoietts.engine.checkpoints import find_models_dir, read_config

    say = progress or (lambda message: None)
    total = read_config(find_models_dir(inputs.models_dir))["autoregressive"]["layers"]
    specs = list(specs or [])
    if sweep or not specs:
        specs += [spec for spec in sweep_specs(total) if spec not in specs]
    parsed = [(spec, parse_layers(spec, total)) for spec in specs]  # every spec checked before anything loads
    study = prepare(inputs)
    tts, voice, settings, text_ids = study.tts, study.voice, study.settings, study.text_ids
    model = tts.autoregressive

    # Timed sampling, round-robin over the full model and every variant for each repeat (best of
    # the repeats), so drifting machine load hits them alike, as bench's sides alternate.
    runs = [("full", ())] + [(spec, kept_layers(skipped, total)) for spec, skipped in parsed]
    seconds: dict[str, float | None] = dict.fromkeys(name for name, _ in runs)
    sampled = {}
    try:
        say("warm-up")
        tts.sample_raw_codes(text_ids, voice, settings, inputs.seed)  # at full size: first-call costs stay out
        for repeat in range(inputs.repeats):
            for name, kept in runs:
                say(f"sampling, run {repeat + 1}/{inputs.repeats}: {name}")
                codes, elapsed = timed_sampling(tts, text_ids, voice, settings.replace(ar_layers=list(kept)), inputs.seed)
                sampled[name] = codes
                seconds[name] = elapsed if seconds[name] is None else min(seconds[name], elapsed)
        full_codes, full_seconds = sampled["full"], seconds["full"]
        full_steps = decode_steps(full_codes, model.stop_mel_token)
        model.keep_layers(())
        full_logits = teacher_forced_logits(tts, text_ids, voice, full_codes)
        mask = spoken_mask(full_codes, model.stop_mel_token)
        full_clip = None
        if inputs.quality:
            say("full model: audio")
            full_clip = tts.synthesize(inputs.text, voice, settings, inputs.seed)

        variants = []
        for (spec, skipped), (_, kept) in zip(parsed, runs[1:]):
            codes, elapsed = sampled[spec], seconds[spec]
            steps = decode_steps(codes, model.stop_mel_token)
            model.keep_layers(kept)
            logits = teacher_forced_logits(tts, text_ids, voice, full_codes)
            entry = {
                "spec": spec, "skipped": list(skipped), "layers_kept": len(kept),
                **compare_logits(full_logits, logits, mask),
                "ar_seconds": elapsed, "decode_steps": steps,
                "codes_per_second": codes.shape[0] * steps / elapsed,
                # Per decode step, so a model that stops earlier is not credited with speed.
                "speedup_per_step": (full_seconds / full_steps) / (elapsed / steps),
                "quality": None,
            }
            if inputs.quality:
                say(f"skipping {spec}: audio")
                clip = tts.synthesize(inputs.text, voice, settings.replace(ar_layers=list(kept)), inputs.seed)
                entry["quality"] = quality_of(full_clip, clip)
            variants.append(entry)
    finally:
        model.keep_layers(())
    return {
        "weights": study.origin,
        "quality_warning": QUALITY_WARNING if study.origin["kind"] != "official" else None,
        "inputs": inputs.to_dict(),
        "settings": settings.to_dict(),
        "layers": total,
        "full": {"ar_seconds": full_seconds, "decode_steps": full_steps,
                 "codes_per_second": full_codes.shape[0] * full_steps / full_seconds,
                 "audio_seconds": full_clip.seconds if full_clip is not None else None},
        "variants": variants,
    }
