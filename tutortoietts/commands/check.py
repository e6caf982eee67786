"""`tutortoietts check FILES... --master acx`: any audio files against a mastering profile's rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tutortoietts.commands.options import Master

console = Console()


def check(
    files: Annotated[list[Path], typer.Argument(help="Audio files (mp3, m4a/m4b, wav, flac...): ours or anyone's.")],
    master: Master = "acx",
    as_json: Annotated[bool, typer.Option("--json", help="The same as JSON on stdout.")] = False,
) -> None:
    """A compliance table per file, pass/fail per rule; exit code 1 when any rule fails."""
    from tutortoietts.mastering import apply_rules, load_profile, measure_file

    profile = load_profile(master)
    reports, failed = [], False
    for path in files:
        measurement = measure_file(path)
        results = apply_rules(measurement, profile)
        failed |= not all(result.passed for result in results)
        reports.append((measurement, results))
    if as_json:
        print(json.dumps({"profile": profile.name, "passed": not failed, "files": [
            {**measurement.to_dict(), "passed": all(r.passed for r in results),
             "rules": [{"rule": r.rule, "measured": r.measured, "required": r.required, "passed": r.passed} for r in results]}
            for measurement, results in reports]}, indent=2, ensure_ascii=False))
    else:
        for measurement, results in reports:
            console.print(file_table(measurement, results, profile.name))
        verdict = "[red]FAIL[/]" if failed else "[green]PASS[/]"
        console.print(f"{verdict}: {sum(all(r.passed for r in rs) for _, rs in reports)} of {len(reports)} file(s) meet --master {profile.name}")
    if failed:
        raise typer.Exit(1)


def file_table(measurement, results, profile: str) -> Table:
    passed = all(result.passed for result in results)
    table = Table(title=f"{measurement.path.name}: {'pass' if passed else 'FAIL'} ({profile})")
    for column in ("rule", "measured", "required", "result"):
        table.add_column(column)
    for result in results:
        table.add_row(result.rule, result.measured, result.required, "pass" if result.passed else "[red]FAIL[/]")
    shown = {result.rule for result in results}
    info = [
        ("codec", measurement.codec), ("sample rate", f"{measurement.sample_rate} Hz"),
        ("bitrate", f"{measurement.bitrate_kbps:g} kbps {measurement.bitrate_mode}".strip() if measurement.bitrate_kbps else "?"),
        ("channels", str(measurement.channels)), ("RMS", f"{measurement.rms_db:.1f} dB"),
        ("peak", f"{measurement.peak_db:.1f} dB"), ("true peak", f"{measurement.true_peak_db:.1f} dBTP"),
        ("loudness", f"{measurement.lufs:.1f} LUFS"), ("noise floor", f"{measurement.noise_floor_db:.1f} dB"),
        ("head room tone", f"{measurement.head_seconds:.2f} s"), ("tail room tone", f"{measurement.tail_seconds:.2f} s"),
        ("duration", f"{measurement.duration / 60:.1f} min"),
        ("tags", ", ".join(k for k in ("title", "artist", "album") if measurement.tags.get(k)) or "none"),
        ("cover", "embedded" if measurement.cover else "none"),
    ]
    for rule, value in info:
        if rule not in shown:
            table.add_row(rule, value, "-", "info")
    return table
