"""`redo`: render named chunks of a finished job again with new seeds (or new text), then stitch the book again."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tutortoietts.errors import UserError
from tutortoietts.gate import GateOptions, render_gated
from tutortoietts.jobs import storage_error
from tutortoietts.render import request_from_record, request_record


@dataclass
class RedoSummary:
    job_dir: Path
    outputs: list[Path]
    redone: list[dict]  # per named chunk: name, attempt kept, its flags
    rendered: int  # chunks rendered (named ones and any the lexicon or an earlier stop left pending)


def redo(job_dir: Path, names: list[str], *, text: str | None = None, lexicon: Path | None = None,
         retries: int | None = None, asr: bool | None = None, asr_model: Path | None = None,
         models_dir: Path | None = None, device: str | None = None, progress=None) -> RedoSummary:
    """Render the named chunks again with new seeds (one of them with new text), then stitch the book again.

    The job's own request (what generate was asked for) decides everything else, so the book comes
    out as generate would make it. With a lexicon, chunks whose text it changes are rendered too.
    """
    from tutortoietts.cache import Cache
    from tutortoietts.jobs import DB_NAME, Job, plan_hash
    from tutortoietts.render import (ProgressTracker, check_export_possible, make_renderer, plan_render, prepare_job,
                                     raise_failures, repair_notices, stitch_job)

    job_dir = Path(job_dir)
    if not (job_dir / DB_NAME).is_file():
        raise UserError(f"no job in {job_dir} (a job folder holds {DB_NAME}; `tutortoietts jobs` lists them)")
    if not names and lexicon is None:
        raise UserError("name the chunks to render again, as `tutortoietts qa` lists them (e.g. 0-3)")
    if text is not None and len(names) != 1:
        raise UserError("--text replaces one chunk's text: name exactly one chunk")
    with Job.open(job_dir) as job:
        record = job.request()
        if record is None:
            raise UserError(f"{job_dir} was rendered before `redo` existed: run generate on it once, then redo")
        changes = {"out_dir": job_dir, "force": False}
        for name, value in (("lexicon", lexicon), ("retries", retries), ("asr", asr), ("asr_model", asr_model),
                            ("models_dir", models_dir), ("device", device)):
            if value is not None:
                changes[name] = value
        request = request_from_record(record, **changes)
        options = GateOptions(request.retries, request.asr or request.asr_model is not None, request.asr_model)
        plan = plan_render(request)
        check_export_possible(request)
        notices = list(job.notices)
        if lexicon is not None:
            notices += repair_notices(prepare_job(job, plan, request))
        elif job.info()["plan_hash"] != plan_hash(plan.chunks):
            raise UserError("the manuscript, its settings or the lexicon changed since this job was rendered: "
                            "run generate on it first, then redo")
        rows = {row.name: row for row in job.rows()}
        unknown = [name for name in names if name not in rows]
        if unknown:
            raise UserError(f"no chunk {', '.join(unknown)} in this job: names run from {next(iter(rows))} to "
                            f"{list(rows)[-1]}, as `tutortoietts qa {job_dir}` lists them")
        recorded: dict[str, int] = {}
        for take in job.takes():
            recorded[take["cache_key"]] = max(recorded.get(take["cache_key"], 1), take["attempt"])
        first_attempts, extra_keys = {}, {}
        for name in dict.fromkeys(names):
            row = rows[name]
            if text is not None:
                corrected = plan_render(request_from_record(record, **changes, text_overrides=((name, text),)))
                planned = next(c for c in corrected.chunks if f"{c.chapter}-{c.index}" == name)
                extra_keys[planned.cache_key] = corrected.ar_keys[planned.cache_key]
                try:
                    row = rows[name] = job.replace_chunk(row, planned.text, planned.seed, planned.cache_key)
                except (OSError, sqlite3.OperationalError) as error:
                    raise storage_error(error, job_dir, 0) from None
            # A new seed: the attempt after every take recorded for this text (the first, for new text).
            first_attempts[name] = recorded[row.cache_key] + 1 if row.cache_key in recorded else (1 if text else 2)
        todo = [rows[name] for name in dict.fromkeys(names)]
        todo += [row for row in job.rows("pending") if row.name not in first_attempts]
        with Cache(request.cache_dir) as cache:
            total = len(rows)
            tracker = ProgressTracker(progress, total - len(todo), total, len(todo))
            tracker.notices([*cache.take_notices(), *notices])
            renderer = make_renderer(plan, request, cache)
            counts = render_gated(job, plan, request, cache, renderer, todo, tracker, options,
                                  first_attempts=first_attempts, ar_keys=extra_keys, systemic_rule=False)
            raise_failures(counts, total, job_dir)
            try:
                outputs = stitch_job(job, plan, request)
            except (OSError, sqlite3.OperationalError) as error:
                raise storage_error(error, job_dir, tracker.done) from None
            job.mark_finished()
            job.set_request(request_record(request))
        final = {row.name: row for row in job.rows()}
        redone = []
        for name in dict.fromkeys(names):
            row = final[name]
            kept = next((t for t in job.takes(row.cache_key) if t["sha256"] == row.checksum), None)
            redone.append({"name": name, "text": row.text, "attempt": kept["attempt"] if kept else None,
                           "flags": kept["flags"] if kept else None})
    return RedoSummary(job_dir, outputs, redone, counts.rendered + counts.ar_cache + counts.audio_cache)
