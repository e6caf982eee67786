"""`generate --master acx` writes what `check --master acx` passes; files that break a rule fail, naming it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli_support import FAST, cli, cli_in_process, ffmpeg_missing, one_error_line

pytestmark = pytest.mark.skipif(ffmpeg_missing, reason="ffmpeg/ffprobe not installed")
BOOK = "# Check Book\n\n## One\n\nHello there, this is the first chunk.\n\nAnd this is a second paragraph.\n\n## Two\n\nThe end.\n"


@pytest.fixture(scope="module")
def acx_chapters(workspace, models, tmp_path_factory):
    root = tmp_path_factory.mktemp("acx")
    book = root / "check.md"
    book.write_text(BOOK)
    result = cli("generate", book, "--voice", workspace["voice"], "--models-dir", models, *FAST, "--out", root / "job",
                 "--master", "acx", "--subtitles", "srt", "--author", "Ann Author", "--quiet", env=workspace["env"])
    print(f"[check] generate --master acx: {result.seconds:.1f} s, stdout {result.stdout.strip()}")
    assert Path(result.stdout.strip()) == root / "job" / "chapters"  # ACX takes chapter files, no whole-book file
    files = sorted((root / "job" / "chapters").glob("*.mp3"))
    assert [f.name for f in files] == ["01 - One.mp3", "02 - Two.mp3"]
    assert not list((root / "job").glob("*.mp3")) and not list((root / "job").glob("*.m4b"))
    return {"files": files, "root": root, "env": workspace["env"]}


@pytest.fixture
def check(monkeypatch, capsys):
    """`tutortoietts check ...` through the console entry point, in this process (no start-up cost)."""
    def run(*args, env=None):
        monkeypatch.setenv("COLUMNS", "200")
        return cli_in_process("check", *args, monkeypatch=monkeypatch, capsys=capsys)

    run.generate = lambda *args: cli_in_process("generate", *args, monkeypatch=monkeypatch, capsys=capsys)
    return run


def rule_results(result) -> dict[str, dict]:
    report = json.loads(result.stdout)
    return {f["path"]: {r["rule"]: r for r in f["rules"]} for f in report["files"]}


def test_acx_output_passes_check(acx_chapters, check):
    result = check(*acx_chapters["files"], "--master", "acx", "--json", env=acx_chapters["env"])
    report = json.loads(result.stdout)
    for file in report["files"]:
        print(f"[check] {Path(file['path']).name}: " + ", ".join(f"{r['rule']} {r['measured']}" for r in file["rules"]))
    assert result.returncode == 0 and report["passed"], result.stdout
    for file in report["files"]:
        assert (file["sample_rate"], file["channels"], file["bitrate_mode"], file["cover"]) == (44100, 1, "cbr", False)
        assert -23 <= file["rms_db"] <= -18 and file["peak_db"] <= -3 and file["noise_floor_db"] <= -60
    table = check(*acx_chapters["files"], env=acx_chapters["env"])  # --master acx is check's default
    assert table.returncode == 0 and "PASS: 2 of 2" in table.stdout


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.mark.parametrize("case, make, rule", [
    ("too-loud", lambda src, dst: ffmpeg("-i", src, "-af", "volume=8dB", "-c:a", "libmp3lame", "-b:a", "192k", "-ar", "44100", dst), "RMS"),
    ("48-khz", lambda src, dst: ffmpeg("-i", src, "-c:a", "libmp3lame", "-b:a", "192k", "-ar", "48000", dst), "sample rate"),
    ("no-room-tone", lambda src, dst: ffmpeg("-i", src, "-af", "silenceremove=start_periods=1:start_threshold=-45dB,areverse,"
                                             "silenceremove=start_periods=1:start_threshold=-45dB,areverse",
                                             "-c:a", "libmp3lame", "-b:a", "192k", "-ar", "44100", dst), "head room tone"),
], ids=["too-loud", "48-khz", "no-room-tone"])
def test_broken_files_fail_naming_the_rule(acx_chapters, case, make, rule, check):
    bad = acx_chapters["root"] / f"{case}.mp3"
    make(acx_chapters["files"][0], bad)
    result = check(bad, "--master", "acx", "--json", env=acx_chapters["env"])
    rules = rule_results(result)[str(bad)]
    failed = [name for name, r in rules.items() if not r["passed"]]
    print(f"[check] {case}: exit {result.returncode}, failed {[(name, rules[name]['measured']) for name in failed]}")
    assert result.returncode == 1 and rule in failed
    table = check(bad)
    assert table.returncode == 1 and "FAIL" in table.stdout and rule in table.stdout


def test_check_mistakes_are_one_line(acx_chapters, tmp_path, check):
    env = acx_chapters["env"]
    assert "unknown mastering profile 'acks'" in one_error_line(check(acx_chapters["files"][0], "--master", "acks", env=env))
    assert "audio file not found" in one_error_line(check(tmp_path / "none.mp3", env=env))
    (tmp_path / "notes.txt").write_text("not audio")
    assert "cannot be read as audio" in one_error_line(check(tmp_path / "notes.txt", env=env))
    book = acx_chapters["root"] / "check.md"
    line = one_error_line(check.generate(book, "--voice", "random", "--master", "acx", "--format", "m4b"))
    assert "--master acx writes mp3 files" in line
