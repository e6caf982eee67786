"""The quality report of a job folder: every chunk's kept take judged, book-relative checks included;
as a table, as JSON, or as one static HTML page with a player per flagged chunk."""

from __future__ import annotations

import html
import os
import shlex
import time
import urllib.parse
from pathlib import Path

from tutortoietts import qa
from tutortoietts.errors import UserError
from tutortoietts.jobs import read_job_quality


def describe(check: str, figures: dict, book: dict) -> str:
    """The figures behind one check's verdict, in words."""
    f = figures
    try:
        if check == "no_stop":
            return f"no stop token: ran to max_mel_tokens ({f['seconds']:.1f} s of audio)"
        if check == "clipping":
            return f"{f['clipped_fraction']:.2%} of samples pinned at the peak"
        if check == "not_speech":
            return f"voiced {f['voiced_fraction']:.0%} of loud frames, spectral flatness {f['flatness']:.2f}"
        if check == "silence":
            return f"longest pause {f['longest_pause']:.1f} s, {f['lead_silence']:.1f} s before, {f['trail_silence']:.1f} s after"
        if check == "repetition":
            return f"{f['repeat_seconds']:.1f} s of speech repeats {f['repeat_lag']:.1f} s later"
        if check == "truncated":
            return f"ends {f['end_level_db']:.0f} dB below its loudest, with {f['trail_silence']:.2f} s of silence after"
        if check == "duration":
            rate = f.get("speech_rate")
            return f"{rate:.1f} phones/s ({f['phones']} phones in {f['speaking_seconds']:.1f} s of speaking)" if rate else "no speech"
        if check == "asr":
            return f"heard {f['asr_recall']:.0%} of {f['asr_words']} words (WER {f['wer']:.2f}): \"{f.get('asr_text', '')}\""
        if check == "clvp":
            return f"CLVP score {f['clvp_score']:.2f}, the book's median {book.get('clvp_median', float('nan')):.2f}"
        if check == "voice":
            return (f"pitch {f.get('book_pitch_offset', 0):+.1f} semitones from the book's, timbre similarity "
                    f"{f.get('book_voice_similarity', float('nan')):.2f}")
        if check == "render_error":
            return f.get("error", "")
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def redo_command(job_dir: Path, name: str, text: str | None = None) -> str:
    command = f"tutortoietts redo {shlex.quote(str(job_dir))} {name}"
    return command + (f" --text {shlex.quote(text)}" if text is not None else "")


def job_report(job_dir: Path, asr: bool = False, limits: qa.Limits = qa.DEFAULT_LIMITS) -> dict:
    """Every chunk with its verdict: {"job", "chunks": [...], "flagged", "total", "pending", "measured_now"}.

    The kept take's recorded figures are re-judged with `limits`; a finished chunk without a record
    (rendered before the gate existed, or a rebuilt job database) is measured from its file now.
    """
    job_dir = Path(job_dir)
    data = read_job_quality(job_dir)
    if data is None:
        raise UserError(f"no job in {job_dir} (a job folder holds job.sqlite; `tutortoietts jobs` lists them)")
    takes: dict[str, list[dict]] = {}
    for take in data["takes"]:
        takes.setdefault(take["cache_key"], []).append(take)
    recogniser = None
    if asr:
        from tutortoietts.asr import PocketsphinxRecogniser

        recogniser = PocketsphinxRecogniser()
    entries, measured_now = [], 0
    try:
        for row in data["chunks"]:
            own = sorted(takes.get(row.cache_key, []), key=lambda t: t["attempt"])
            kept = next((t for t in own if row.checksum and t["sha256"] == row.checksum), None)
            figures = dict(kept["figures"]) if kept else None
            audio = job_dir / row.audio_path if row.audio_path else None
            if row.status == "done" and audio is not None and audio.is_file() and (
                    figures is None or (recogniser is not None and "asr_recall" not in figures)):
                figures = _measure_file(audio, row.text, figures, recogniser)
                measured_now += 1
            entries.append({"row": row, "takes": own, "kept": kept, "figures": figures, "audio": audio})
    finally:
        if recogniser is not None:
            recogniser.close()
    judged = [e for e in entries if e["figures"] is not None]
    book_flags = qa.judge_book([e["figures"] for e in judged], limits)
    for entry, extra, voice in zip(judged, book_flags, qa.book_voice_figures([e["figures"] for e in judged])):
        entry["figures"].update(voice)
        entry["raw"] = qa.judge(entry["figures"], limits) + extra
    scores = sorted(e["figures"]["clvp_score"] for e in judged if e["figures"].get("clvp_score") is not None)
    book = {"clvp_median": scores[len(scores) // 2] if scores else float("nan")}
    chunks = []
    for entry in entries:
        row = entry["row"]
        raw = entry.get("raw", [])
        if row.status == "failed":
            raw = ["render_error"]
        causes, also = qa.attribute(raw) if row.status != "failed" else (raw, [])
        figures = entry["figures"] or ({"error": row.error} if row.error else {})
        chunks.append({
            "name": row.name,
            "chapter": row.chapter + 1,
            "chapter_title": row.chapter_title or f"Chapter {row.chapter + 1}",
            "index": row.index + 1,
            "text": row.text,
            "status": row.status,
            "flags": causes,
            "also": also,
            "why": {check: describe(check, figures, book) for check in causes + also},
            "figures": {k: v for k, v in figures.items() if k != "cepstrum"},
            "take_kept": entry["kept"]["attempt"] if entry["kept"] else None,
            "takes": len(entry["takes"]),
            "audio": str(entry["audio"].resolve()) if entry["audio"] is not None and entry["audio"].is_file() else None,
            "redo": redo_command(job_dir.resolve(), row.name),
        })
    render_seconds = sum(t["render_seconds"] or 0.0 for t in data["takes"])
    check_seconds = sum(t["check_seconds"] or 0.0 for t in data["takes"])
    return {
        "job": str(job_dir.resolve()),
        # What the gate cost while rendering (wall seconds the takes recorded; cache hits render in ~0).
        "gate": {"takes": len(data["takes"]), "render_seconds": round(render_seconds, 2), "check_seconds": round(check_seconds, 2),
                 "check_share": round(check_seconds / render_seconds, 4) if render_seconds else None},
        "chunks": chunks,
        "flagged": sum(1 for c in chunks if c["flags"]),
        "total": len(chunks),
        "pending": sum(1 for c in chunks if c["status"] == "pending"),
        "measured_now": measured_now,
    }


def _measure_file(path: Path, text: str, known: dict | None, recogniser) -> dict:
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    figures = qa.chunk_figures(samples.mean(axis=1), rate, text, recogniser=recogniser)
    if known:  # what only the render knew (the stop token, CLVP) stays
        figures.update({k: known[k] for k in ("stopped", "clvp_score") if k in known})
    return figures


# ---------------------------------------------------------------------------------------------
# HTML


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }}
section {{ border-top: 1px solid #ccc; padding: 1rem 0; }}
h2 {{ font-size: 1.1rem; margin: 0 0 .5rem; }}
.flag {{ display: inline-block; background: #b3261e; color: #fff; border-radius: .3rem; padding: 0 .4rem; margin-right: .3rem; }}
.also {{ display: inline-block; background: #ddd; border-radius: .3rem; padding: 0 .4rem; margin-right: .3rem; }}
blockquote {{ margin: .5rem 0; padding-left: 1rem; border-left: 3px solid #ccc; }}
table {{ border-collapse: collapse; font-size: .9rem; }}
td {{ padding: .1rem .6rem .1rem 0; vertical-align: top; }}
code {{ background: #f3f3f3; padding: .2rem .4rem; display: inline-block; }}
audio {{ width: 100%; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
{sections}
</body></html>
"""


def render_html(report: dict, page: Path) -> str:
    """One static page: each flagged chunk with a player (a path relative to the page), text, figures, commands."""
    sections = []
    base = Path(page).resolve().parent
    for chunk in report["chunks"]:
        if not chunk["flags"]:
            continue
        flags = "".join(f'<span class="flag">{html.escape(f)}</span>' for f in chunk["flags"])
        flags += "".join(f'<span class="also">{html.escape(f)}</span>' for f in chunk["also"])
        player = "<p>(no audio)</p>"
        if chunk["audio"]:
            source = urllib.parse.quote(Path(os.path.relpath(chunk["audio"], base)).as_posix())
            player = f'<audio controls preload="metadata" src="{source}"></audio>'
        why = "".join(f"<tr><td>{html.escape(check)}</td><td>{html.escape(text)}</td></tr>"
                      for check, text in chunk["why"].items())
        kept = f"take {chunk['take_kept']} of {chunk['takes']}" if chunk["take_kept"] else f"{chunk['takes']} take(s) recorded"
        fix = redo_command(Path(report["job"]), chunk["name"], chunk["text"])
        sections.append(
            f'<section id="chunk-{html.escape(chunk["name"])}">'
            f'<h2>{html.escape(chunk["name"])} · {html.escape(chunk["chapter_title"])}, chunk {chunk["index"]} · {kept}</h2>'
            f"<p>{flags}</p>{player}<blockquote>{html.escape(chunk['text'])}</blockquote>"
            f"<table>{why}</table>"
            f"<p>Render again with a new seed:<br><code>{html.escape(chunk['redo'])}</code></p>"
            f"<p>Or with corrected text:<br><code>{html.escape(fix)}</code></p>"
            "</section>"
        )
    title = f"Quality report: {html.escape(Path(report['job']).name)}"
    pending = f", {report['pending']} not rendered yet" if report["pending"] else ""
    written = html.escape(time.strftime("%Y-%m-%d %H:%M"))
    summary = f"{report['flagged']} of {report['total']} chunks flagged{pending}; written {written}."
    if not sections:
        sections.append("<p>Every chunk passed every check.</p>")
    return PAGE.format(title=title, summary=summary, sections="\n".join(sections))


def table_rows(report: dict, everything: bool = False) -> list[tuple[str, ...]]:
    """(chunk, chapter, text, checks, figures, take kept) per flagged chunk (every chunk with `everything`)."""
    rows = []
    for chunk in report["chunks"]:
        if not chunk["flags"] and not everything:
            continue
        text = chunk["text"] if len(chunk["text"]) <= 60 else chunk["text"][:57] + "..."
        checks = ", ".join(chunk["flags"]) + (f" (also {', '.join(chunk['also'])})" if chunk["also"] else "")
        figures = "; ".join(chunk["why"][check] for check in chunk["flags"] if chunk["why"].get(check))
        kept = f"{chunk['take_kept']}/{chunk['takes']}" if chunk["take_kept"] else ("-" if not chunk["takes"] else f"?/{chunk['takes']}")
        rows.append((chunk["name"], chunk["chapter_title"], text, checks or "ok", figures, kept))
    return rows
