"""`tutortoietts qa`: the table, the JSON and the HTML page of a job's flagged chunks; the page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.cli_support import cli_in_process
from tests.qa_corpus import ESPEAK
from tests.qa_support import EspeakRenderer, generate, make_workspace

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DEFECTS = {("0-1", 1): "loop", ("0-3", 1): "silence", ("1-2", 1): "clipped"}
EXPECTED = {"0-1": ["repetition"], "0-3": ["silence"], "1-2": ["clipping"]}


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models_dir):
    """A 7-chunk book rendered without retries, three chunks keeping a defective take."""
    root = tmp_path_factory.mktemp("qa-report")
    space = make_workspace(root)
    generate(space, tiny_models_dir, root / "job", EspeakRenderer(defects=DEFECTS), retries=0)
    return root / "job"


def test_json_lists_the_flagged_chunks(job, monkeypatch, capsys):
    result = cli_in_process("qa", job, "--json", monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["flagged"], report["total"]) == (3, 7)
    assert {chunk["name"]: chunk["flags"] for chunk in report["chunks"]} == EXPECTED
    for chunk in report["chunks"]:
        assert chunk["take_kept"] == 1 and chunk["takes"] == 1
        assert chunk["audio"].endswith(f"chunks/{chunk['name']}.wav")
        assert chunk["redo"] == f"tutortoietts redo {job} {chunk['name']}"
        assert all(chunk["why"][check] for check in chunk["flags"])
    loop = next(chunk for chunk in report["chunks"] if chunk["name"] == "0-1")
    assert loop["figures"]["repeat_seconds"] > 2 and "duration" in loop["also"]  # three times too long, explained
    everything = json.loads(cli_in_process("qa", job, "--json", "--all", monkeypatch=monkeypatch, capsys=capsys).stdout)
    assert len(everything["chunks"]) == 7 and everything["flagged"] == 3


def test_table_names_chunk_check_figures_and_take(job, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")  # one line per chunk
    result = cli_in_process("qa", job, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    print(out)
    assert "3 of 7 chunks flagged" in out
    for name, (check,) in EXPECTED.items():
        assert name in out and check in out
    assert "Chapter One" in out and "pinned at the peak" in out and "1/1" in out


def test_qa_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    result = cli_in_process("qa", tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "no job in" in lines[0]


def test_a_rebuilt_database_is_measured_from_the_chunk_files(job, tmp_path, space_for, tiny_models_dir, monkeypatch, capsys):
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    for name in ("job.sqlite", "job.sqlite-wal", "job.sqlite-shm"):
        (copy / name).unlink(missing_ok=True)
    untouched = EspeakRenderer()
    generate(space_for(job), tiny_models_dir, copy, untouched, retries=0)  # rebuilt from the files: nothing rendered
    assert untouched.calls == []
    report = json.loads(cli_in_process("qa", copy, "--json", monkeypatch=monkeypatch, capsys=capsys).stdout)
    assert report["measured_now"] == 7
    assert {chunk["name"]: chunk["flags"] for chunk in report["chunks"]} == EXPECTED


@pytest.fixture
def space_for():
    return lambda job: {"book": job.parent / "book.md", "voice": job.parent / "espeak-voice"}


# ---------------------------------------------------------------------------------------------
# The page in a real browser


def open_in_chromium(page, profile):
    """Load `page` in headless Chromium; return each player's state and the console's messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        players = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every player has its metadata or an error
            players = driver.execute_script(
                "return Array.from(document.querySelectorAll('audio')).map(a => ({src: a.currentSrc,"
                " ready: a.readyState, error: a.error ? a.error.code : null, duration: a.duration}))")
            if all(p["ready"] >= 1 or p["error"] is not None for p in players):
                break
            time.sleep(0.2)
        title = driver.title
        text = driver.find_element("tag name", "body").text
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    return title, text, players, logs


needs_chromium = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                    reason="chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")


@needs_chromium
def test_html_page_loads_in_chromium_with_working_players(job, tmp_path, monkeypatch, capsys):
    from urllib.parse import unquote, urlparse

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    page = tmp_path / "report" / "qa.html"  # elsewhere than the job: the players' paths are relative
    page.parent.mkdir()
    result = cli_in_process("qa", job, "--html", page, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    started = time.perf_counter()
    title, text, players, logs = open_in_chromium(page, tmp_path / "profile")
    print(f"[qa] chromium: {len(players)} players, {len(logs)} console messages, {time.perf_counter() - started:.1f} s")
    assert title == f"Quality report: {job.name}"
    assert "3 of 7 chunks flagged" in text
    for name in EXPECTED:
        assert f"tutortoietts redo {job} {name}" in text
    assert len(players) == 3
    for player in players:
        path = Path(unquote(urlparse(player["src"]).path))
        assert path.is_file() and path.resolve().parent == (job / "chunks").resolve()
        assert player["error"] is None and player["ready"] >= 1 and player["duration"] > 1, player
    errors = [entry for entry in logs if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors


@needs_chromium
def test_the_browser_check_sees_a_broken_page(tmp_path, monkeypatch):
    """The same check on a page with a missing audio file and a script error must report both."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><title>broken</title></head><body>'
                    '<audio controls src="missing.wav"></audio><script>console.error("boom")</script></body></html>')
    _, _, players, logs = open_in_chromium(page, tmp_path / "profile")
    assert players[0]["error"] is not None
    assert any("boom" in entry["message"] for entry in logs if entry["level"] == "SEVERE")
