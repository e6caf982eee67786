"""Issue 5's bad-input matrix: every mistake, through the real CLI, is exit 1 and one line, and the
job already rendered in the --out folder is left exactly as it was."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.cli_support import (
    FAST,
    cli,
    cli_in_process,
    one_error_line,
)
from tests.epub_support import BAD_EPUBS, bad_epub

BOOK = "# Small Book\n\n## One\n\nHello there, this is the first chunk.\n\nAnd this is a second paragraph.\n\n## Two\n\nThe end.\n"


class CodeCarrier:
    """What a trojaned checkpoint holds: unpickling it calls os.system. Never unpickled here."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Bench:
    """The fixture job and the files the cases are built from."""

    root: Path
    book: Path
    voice: Path
    models: Path
    job: Path
    voices: Path  # TUTORTOIETTS_VOICES for the named-voice cases
    env: dict = field(default_factory=dict)

    def args(self, *extra, book=None, voice=None, models=None, out=None) -> list:
        """`generate` exactly as the fixture job was made, with one thing changed."""
        return ["generate", book or self.book, "--voice", voice or self.voice, "--models-dir", models or self.models,
                *FAST, "--format", "wav", "--out", out or self.job, *extra]

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def folder(self, name: str) -> Path:
        path = self.root / "inputs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def models_with(self, name: str, damage: Callable[[Path], None]) -> Path:
        """A copy of the tiny checkpoints with one file damaged."""
        folder = self.root / "damaged-models" / name
        shutil.rmtree(folder, ignore_errors=True)  # built afresh each time a case runs (the summary runs it again)
        shutil.copytree(self.models, folder)
        damage(folder)
        return folder

    def voice_folder(self, name: str, clips: dict[str, bytes | float]) -> Path:
        """A folder of clips: bytes are written as they are, a float is a tone of that many seconds."""
        folder = self.root / "voice-folders" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for clip, content in clips.items():
            if isinstance(content, bytes):
                (folder / clip).write_bytes(content)
            else:
                write_tone(folder / clip, content)
        return folder


def write_tone(path: Path, seconds: float, rate: int = 22050) -> None:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), rate)


def job_state(job: Path) -> tuple:
    """Everything rendered in a job folder: its files' bytes and the database's rows."""
    files = {p.relative_to(job).as_posix(): p.read_bytes() for p in sorted(job.rglob("*"))
             if p.is_file() and not p.name.startswith("job.sqlite") and p.name != "job.lock"}
    db = sqlite3.connect(job / "job.sqlite")
    try:
        rows = db.execute("SELECT * FROM chunks ORDER BY chapter, idx").fetchall()
        header = db.execute("SELECT * FROM job").fetchall()
    finally:
        db.close()
    return files, rows, header


@pytest.fixture(scope="module")
def bench(workspace, models, tmp_path_factory):
    """A small book rendered once (tiny random weights, a tone voice) into the job every case aims at."""
    from tutortoietts import cli as cli_module

    root = tmp_path_factory.mktemp("bad-input")
    voices = root / "user-voices"
    (voices / "silent").mkdir(parents=True)
    (voices / "silent" / "notes.txt").write_text("a voice folder with no audio in it")
    b = Bench(root=root, book=root / "book.md", voice=workspace["voice"], models=models, job=root / "job",
              voices=voices, env=workspace["env"])
    b.book.write_text(BOOK)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["tutortoietts", *map(str, b.args("--quiet"))])
        try:
            cli_module.main()
        except SystemExit as done:
            assert done.code in (0, None), done.code
    state = job_state(b.job)
    assert len(state[1]) == 5 and all("done" in row for row in state[1]), state[1]
    return b


# ---------------------------------------------------------------------------------------------
# The matrix: (case, its command line built from the bench, words the line must hold).


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Bench], list]
    expect: tuple[str, ...]
    env: dict = field(default_factory=dict)
    subprocess: bool = False  # for what only a real process shows (nothing executed, env read at import)
    cwd: str | None = None  # relative to the bench root, for relative --voice paths


def _setting(assignment: str, *expect: str) -> Case:
    key = assignment.split("=")[0]
    return Case(f"set-{assignment}", lambda b: b.args("--set", assignment), (f"setting {key} =", "out of range", *expect))


def _damaged(name: str, damage: Callable[[Path], None], *expect: str, **options) -> Case:
    return Case(f"weights-{name}", lambda b: b.args(models=b.models_with(name, damage)), expect, **options)


def _random_bytes(folder: Path) -> None:
    (folder / "diffusion_decoder.pth").write_bytes(random.Random(0).randbytes(4096))


def _truncated(folder: Path) -> None:
    path = folder / "autoregressive.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(folder: Path) -> None:
    (folder / "vocoder.pth").write_bytes(b"")


def _code_in_zip(folder: Path) -> None:
    """A real torch.save archive whose pickle calls os.system: the trojaned-checkpoint attack."""
    import torch

    state = torch.load(folder / "rlg_auto.pth", weights_only=True)
    state["payload"] = CodeCarrier(folder / "EXECUTED")
    torch.save(state, folder / "rlg_auto.pth")


def _code_in_raw_pickle(folder: Path) -> None:
    """The same attack as a bare pickle (the legacy, non-zip path through torch.load)."""
    (folder / "clvp2.pth").write_bytes(pickle.dumps({"payload": CodeCarrier(folder / "EXECUTED")}, protocol=2))


def _bad_config(folder: Path) -> None:
    (folder / "tortoise-config.json").write_text("{not json")


CASES = [
    # The manuscript.
    Case("missing-file", lambda b: b.args(book=b.root / "nowhere.md"), ("manuscript not found", "nowhere.md")),
    Case("directory", lambda b: b.args(book=b.folder("chapters.md")), ("manuscript is a directory", "chapters.md")),
    Case("empty-file", lambda b: b.args(book=b.file("empty.md", "")), ("manuscript is empty",)),
    Case("whitespace-only", lambda b: b.args(book=b.file("blank.txt", "  \n\t\n   \r\n\n")), ("manuscript is empty",)),
    Case("invisible-only", lambda b: b.args(book=b.file("invisible.txt", "\u00a0\u200b\n\ufeff \u2003\n")), ("manuscript is empty",)),
    # No letter or digit anywhere: nothing to read either, however much punctuation.
    Case("punctuation-only", lambda b: b.args(book=b.file("punctuation.md", "...!!! ??? ;;; ---\n")),
         ("manuscript has no text to read", "punctuation.md")),
    Case("punctuation-and-symbols", lambda b: b.args(book=b.file("symbols.txt", "# ...\n\n* * *\n\n\u2014 \u2026 \u00bf?! \U0001F600\n")),
         ("manuscript has no text to read", "symbols.txt")),
    Case("binary-file", lambda b: b.args(book=b.file("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))),
         ("looks binary", "image.txt")),
    Case("invalid-utf8", lambda b: b.args(book=b.file("cp1252.txt", "Caf\u00e9 \u2013 na\u00efve text.".encode("cp1252"))),
         ("not UTF-8 text", "offset 3", "--encoding")),
    Case("unknown-encoding", lambda b: b.args("--encoding", "klingon", book=b.file("cp1252.txt", "Caf\u00e9.".encode("cp1252"))),
         ("unknown --encoding 'klingon'",)),
    Case("wrong-encoding", lambda b: b.args("--encoding", "ascii", book=b.file("cp1252.txt", "Caf\u00e9.".encode("cp1252"))),
         ("not ascii text", "offset 3")),
    # EPUB files (tests/epub_support.py damages a small test book one way each): DRM, not a zip, a
    # damaged zip, no container or OPF, XML entities (external and a bomb), ../ and absolute entry
    # names (never extracted), an enormous cover, nothing but front matter.
    *[Case(f"epub-{name}", lambda b, name=name: b.args(book=bad_epub(b.folder("epubs"), name)), (f"{name}.epub", words))
      for name, (_, words) in BAD_EPUBS.items()],
    # Voices.
    Case("unknown-voice", lambda b: b.args(voice="emmma"), ("unknown voice 'emmma'", "did you mean emma")),
    Case("empty-voice", lambda b: b.args(voice=" "), ("--voice is empty",)),
    Case("named-voice-no-audio", lambda b: b.args(voice="silent"), ("voice 'silent' has no audio clips",)),
    Case("voice-folder-no-audio", lambda b: b.args(voice=b.voice_folder("no-audio", {"readme.txt": b"hello"})),
         ("has no audio clips", "no-audio")),
    Case("voice-unreadable-audio", lambda b: b.args(voice=b.voice_folder("garbage", {"a.wav": 2.0, "b.wav": b"RIFF" + bytes(500)})),
         ("b.wav cannot be read as audio",)),
    Case("voice-clip-too-short", lambda b: b.args(voice=b.voice_folder("short", {"a.wav": 2.0, "blip.wav": 0.1})),
         ("blip.wav is too short (0.10 s)", "at least 0.5 s")),
    Case("voice-clip-empty", lambda b: b.args(voice=b.voice_folder("empty-clip", {"none.wav": 0.0})),
         ("none.wav is too short (0.00 s)",)),
    # A name is never a path: these are read as paths (relative to the working directory) and refused as such.
    Case("voice-traversal-dotdot", lambda b: b.args(voice="../../etc"), ("no audio clips", "../../etc"), cwd="work/deep"),
    Case("voice-traversal-inner", lambda b: b.args(voice="a/../../b"), ("voice path not found: a/../../b",), cwd="work/deep"),
    # Presets and settings.
    Case("unknown-preset", lambda b: b.args("--preset", "ultra_fastest"), ("unknown preset 'ultra_fastest'", "known presets")),
    _setting("num_autoregressive_samples=-1", "at least 1"),
    _setting("num_autoregressive_samples=0", "at least 1"),
    _setting("top_p=1.5", "greater than 0 and at most 1"),
    _setting("top_p=0", "greater than 0 and at most 1"),
    _setting("diffusion_iterations=0", "between 2 and 4000"),
    _setting("diffusion_iterations=1", "between 2 and 4000"),
    _setting("temperature=0", "greater than 0"),
    _setting("temperature=-0.5", "greater than 0"),
    _setting("temperature=nan", "greater than 0"),
    _setting("max_mel_tokens=5000", "between 1 and 604"),
    # Weights.
    Case("weights-missing-offline", lambda b: b.args(models=b.root / "no-models"),
         ("weights not found", "autoregressive.pth", "tutortoietts models download", "HF_HUB_OFFLINE"),
         env={"HF_HUB_OFFLINE": "1"}),
    _damaged("random-bytes", _random_bytes, "diffusion_decoder.pth cannot be read as a checkpoint", "not a PyTorch file",
             "tutortoietts models download"),
    _damaged("truncated", _truncated, "autoregressive.pth cannot be read as a checkpoint", "truncated"),
    _damaged("empty-file", _empty, "vocoder.pth cannot be read as a checkpoint", "empty"),
    _damaged("bad-config", _bad_config, "tortoise-config.json is not valid JSON"),
    _damaged("pickle-with-code", _code_in_zip, "rlg_auto.pth was refused", "pickled code (posix.system)", "nothing was run",
             subprocess=True),
    _damaged("raw-pickle-with-code", _code_in_raw_pickle, "clvp2.pth was refused", "pickled code (posix.system)"),
    # Not aimed at the job: `models download` with no network.
    Case("download-offline", lambda b: ["models", "download", "--models-dir", b.root / "download-here"],
         ("could not download autoregressive.pth", "check the network connection"), env={"HF_HUB_OFFLINE": "1"},
         subprocess=True),
]


def run_case(case: Case, bench: Bench, monkeypatch, capsys) -> str:
    """One case through the CLI: exit 1 with one error line holding the case's words, nothing on
    stdout, the rendered job untouched, no pickled code run. Returns the line."""
    before = job_state(bench.job)
    args = case.args(bench)
    cwd = bench.root / case.cwd if case.cwd else None
    if cwd is not None:
        cwd.mkdir(parents=True, exist_ok=True)
        (bench.root / "etc").mkdir(exist_ok=True)
        (bench.root / "etc" / "passwd").write_text("root:x:0:0\n")  # what `../../etc` finds from work/deep
    voices_env = {"TUTORTOIETTS_VOICES": str(bench.voices), "TUTORTOIETTS_PROJECT_VOICES": str(bench.root / "no-project-voices")}
    started = time.perf_counter()
    if case.subprocess:
        result = cli(*args, env={**bench.env, **voices_env, **case.env}, cwd=cwd, check=False)
    else:
        for key, value in {**voices_env, **case.env}.items():
            monkeypatch.setenv(key, value)
        if cwd is not None:
            monkeypatch.chdir(cwd)
        result = cli_in_process(*args, monkeypatch=monkeypatch, capsys=capsys)
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[bad-input] {case.name}: exit {result.returncode} ({seconds:.1f} s): {result.stderr.strip()}")
    line = one_error_line(result)
    for words in case.expect:
        assert words in line, f"{words!r} not in {line!r}"
    assert not result.stdout.strip(), result.stdout  # stdout carries only a finished book's path
    assert job_state(bench.job) == before, "the rendered job changed"
    assert not list(bench.root.rglob("EXECUTED")), "a checkpoint's pickled code ran"
    return line


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case, bench, monkeypatch, capsys):
    run_case(case, bench, monkeypatch, capsys)


# ---------------------------------------------------------------------------------------------
# Text that is not an error but must be chunked within the engine's bounds, not crash. Rendering
# megabytes on tiny weights would take hours, so these check the plan (plan_render: what generate
# does before any rendering) and leave the real CLI to a small book.

WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island", "juniper", "kestrel", "lantern"]
PLANNING_BUDGET_SECONDS = 120  # for the 5 MB line, projected from a prefix before the full run


def _request(bench, book: Path):
    from tutortoietts.render import RenderRequest

    return RenderRequest(book=book, voice=str(bench.voice), preset="ultra_fast_v2", models_dir=bench.models,
                         device="cpu", precision="fp32", fmt="wav", out_dir=bench.root / "never-written")


def _assert_chunks_bounded(plan, text: str) -> str:
    """Every chunk within the engine's text limit, and every character of the text in order
    (spaces aside: a word too long for the engine may be cut in pieces)."""
    from tutortoietts.chunking import normalise_text
    from tutortoietts.engine.tokenizer import TEXT_TOKEN_LIMIT, Tokenizer

    tokenizer = Tokenizer()
    largest = max(len(tokenizer.encode(chunk.text)) for chunk in plan.chunks)
    assert largest <= TEXT_TOKEN_LIMIT, f"a chunk of {largest} tokens would reach the engine (limit {TEXT_TOKEN_LIMIT})"
    joined = "".join("".join(chunk.text for chunk in plan.chunks).split())
    assert joined == "".join(normalise_text(text).split()), "text lost or reordered"
    return f"{len(plan.chunks)} chunks, largest {largest} tokens (limit {TEXT_TOKEN_LIMIT})"


def test_five_megabyte_line_without_punctuation(bench, capsys):
    """One 5 MB line of words, no punctuation: the whole book is planned into bounded chunks."""
    from tutortoietts.chunking import chunk_text
    from tutortoietts.render import plan_render

    rng = random.Random(5)
    line = " ".join(rng.choice(WORDS) for _ in range(800_000))[: 5 * 2**20].rstrip()
    # A chunker that is linear but slow would sit here for many minutes: project from 16 KB first.
    prefix = line[: line.rfind(" ", 0, 2**14)]
    started = time.perf_counter()
    chunk_text(prefix)
    projected = (time.perf_counter() - started) * len(line) / len(prefix)
    assert projected < PLANNING_BUDGET_SECONDS, f"planning 5 MB would take ~{projected / 60:.0f} min"
    book = bench.file("five-mb.txt", line + "\n")
    started = time.perf_counter()
    plan = plan_render(_request(bench, book))
    planned = time.perf_counter() - started
    outcome = _assert_chunks_bounded(plan, line)
    with capsys.disabled():
        print(f"\n[bad-input] 5 MB line: planned in {planned:.1f} s: {outcome}")


OVER_LIMIT_WORD = "x" * 1000  # 1000 tokens: no chunk of the engine's 398 can hold it whole


@pytest.mark.parametrize("text", [OVER_LIMIT_WORD, f"He said {OVER_LIMIT_WORD} and left.", "y" * 20_000],
                         ids=["alone", "in-a-sentence", "20k-characters"])
def test_over_limit_word_never_reaches_the_engine(bench, text):
    """Planning either cuts the word into bounded pieces or refuses it with one line: never a chunk the
    engine refuses after the rest of the book has rendered."""
    from tutortoietts.errors import UserError
    from tutortoietts.render import plan_render

    try:
        plan = plan_render(_request(bench, bench.file("over-limit.md", f"# Long\n\n{text}\n")))
    except UserError as error:
        assert "too long" in str(error) and "\n" not in str(error)
        return
    print(_assert_chunks_bounded(plan, text))  # "# Long" is the book's title, not read as a chapter title


LONG_WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 7  # 315 characters, 189 tokens: fits alone


@pytest.mark.parametrize("word", [LONG_WORD, OVER_LIMIT_WORD], ids=["within-limit", "over-limit"])
def test_long_word_through_the_cli(bench, word, monkeypatch, capsys):
    """A small book with a very long word, rendered by the real CLI on tiny weights: the book is made,
    or (should planning refuse the word) one line and nothing rendered. --quiet: off a terminal the
    progress bar's last frame goes to stderr too, and it is not an error line."""
    book = bench.file("long-word.md", f"# Long\n\nA first sentence.\n\nHe said {word} and left.\n")
    out = bench.root / f"long-word-job-{len(word)}"
    monkeypatch.setenv("TUTORTOIETTS_VOICES", str(bench.voices))
    result = cli_in_process(*bench.args("--quiet", book=book, out=out), monkeypatch=monkeypatch, capsys=capsys)
    name = "long-word" if word == LONG_WORD else "over-limit-word"
    if result.returncode == 0:
        texts = [row[0] for row in sqlite3.connect(out / "job.sqlite").execute("SELECT text FROM chunks WHERE status='done'")]
        outcome = f"exit 0, {len(texts)} chunks rendered"
        assert "".join(word.split()) in "".join("".join(texts).split())
    else:
        outcome = f"exit {result.returncode}: {one_error_line(result)}"
        assert "too long" in outcome and not out.exists()
    with capsys.disabled():
        print(f"\n[bad-input] {name}: {outcome}")


def test_encoding_option_reads_a_cp1252_book(bench, monkeypatch, capsys):
    """The fix the invalid-UTF-8 line suggests works: --encoding cp1252 renders, the accents intact."""
    book = bench.file("cafe.txt", "Le caf\u00e9 na\u00eff \u2013 d\u00e9j\u00e0 vu.\n".encode("cp1252"))
    out = bench.root / "cp1252-job"
    monkeypatch.setenv("TUTORTOIETTS_VOICES", str(bench.voices))
    result = cli_in_process(*bench.args("--quiet", "--encoding", "cp1252", book=book, out=out), monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    texts = [row[0] for row in sqlite3.connect(out / "job.sqlite").execute("SELECT text FROM chunks")]
    assert texts == ["Le caf\u00e9 na\u00eff - d\u00e9j\u00e0 vu."], texts


def test_summary(bench, capsys):
    """The count the issue's report quotes, computed here: every case of the matrix is run again,
    so the summary holds alone, under -k, and in any order (it reads nothing other tests left)."""
    lines = {}
    for case in CASES:
        with pytest.MonkeyPatch.context() as monkeypatch:
            lines[case.name] = run_case(case, bench, monkeypatch, capsys)  # fails on the first case that fails
    with capsys.disabled():
        print(f"\n[bad-input] {len(CASES)} cases, {len(lines)} pass: exit 1, one line each, the job untouched")
    assert list(lines) == [case.name for case in CASES]
    assert all(line.startswith("error: ") for line in lines.values())
