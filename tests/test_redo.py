"""The quality gate in the render loop (retries, best take, resume), `redo` and `--lexicon`, with a renderer that
speaks with espeak-ng and makes chosen takes defective."""

from __future__ import annotations

import hashlib

import pytest

from tests.cli_support import cli_in_process
from tests.qa_corpus import ESPEAK
from tests.qa_support import EspeakRenderer, chunk_bytes, generate, make_workspace, request
from tutortoietts import gate
from tutortoietts.redo import redo
from tutortoietts.errors import UserError
from tutortoietts.gate import take_seed
from tutortoietts.jobs import Job, chunk_seed

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

NAMES = ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1", "1-2"]  # "Chapter One." and three paragraphs, then two


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("qa-gate"))


def takes_by_chunk(job_dir):
    with Job.open(job_dir) as job:
        rows = {row.cache_key: row for row in job.rows()}
        found = {}
        for take in job.takes():
            if take["cache_key"] in rows:
                found.setdefault(rows[take["cache_key"]].name, []).append(take)
        return found, {row.name: row for row in rows.values()}


def kept_attempt(job_dir, name):
    takes, rows = takes_by_chunk(job_dir)
    return next(t["attempt"] for t in takes[name] if t["sha256"] == rows[name].checksum)


def test_a_failing_take_is_rendered_again_with_a_derived_seed(space, tiny_models_dir, tmp_path):
    renderer = EspeakRenderer(defects={("0-2", 1): "loop"})
    summary, notices = generate(space, tiny_models_dir, tmp_path / "job", renderer)
    assert [name for name, _, _ in renderer.calls] == NAMES + ["0-2"]
    takes, rows = takes_by_chunk(tmp_path / "job")
    assert [(t["attempt"], t["flags"]) for t in takes["0-2"]] == [(1, ["repetition", "duration"]), (2, [])]
    own = chunk_seed(0, rows["0-2"].text)
    assert [t["seed"] for t in takes["0-2"]] == [own, take_seed(own, 2)] and take_seed(own, 2) != own
    assert kept_attempt(tmp_path / "job", "0-2") == 2
    assert all(len(takes[name]) == 1 and takes[name][0]["flags"] == [] for name in NAMES if name != "0-2")
    assert not (tmp_path / "job" / "chunks" / ".takes").exists() or not any((tmp_path / "job" / "chunks" / ".takes").iterdir())
    assert notices == []  # it passed in the end
    assert summary.outputs[0].is_file()


def test_the_best_take_is_kept_when_every_take_fails(space, tiny_models_dir, tmp_path):
    # noise fails several checks, the silence one, the loop two: the silence take is kept.
    defects = {("1-1", 1): "noise", ("1-1", 2): "silence", ("1-1", 3): "loop"}
    renderer = EspeakRenderer(defects=defects)
    _, notices = generate(space, tiny_models_dir, tmp_path / "job", renderer)
    takes, _ = takes_by_chunk(tmp_path / "job")
    print([(t["attempt"], t["flags"]) for t in takes["1-1"]])
    assert [t["attempt"] for t in takes["1-1"]] == [1, 2, 3]
    assert takes["1-1"][1]["flags"] == ["silence"]
    assert kept_attempt(tmp_path / "job", "1-1") == 2
    assert any("1 chunk(s) still fail a check after 2 retake(s)" in notice for notice in notices), notices


def test_no_retries_keeps_the_first_take(space, tiny_models_dir, tmp_path):
    renderer = EspeakRenderer(defects={("0-1", 1): "clipped"})
    generate(space, tiny_models_dir, tmp_path / "job", renderer, retries=0)
    assert [name for name, _, _ in renderer.calls] == NAMES
    takes, _ = takes_by_chunk(tmp_path / "job")
    assert [t["flags"] for t in takes["0-1"]] == [["clipping"]]


def test_chunks_failing_alike_are_not_retried(space, tiny_models_dir, tmp_path):
    """Every take is noise that never stopped (as from random weights): nothing is retried, one notice says why."""
    renderer = EspeakRenderer(defects={(None, attempt): "noise" for attempt in (1, 2, 3)}, no_stop={(n, 1) for n in NAMES})
    _, notices = generate(space, tiny_models_dir, tmp_path / "job", renderer)
    assert [(name, attempt) for name, attempt, _ in renderer.calls] == [(name, 1) for name in NAMES]  # not 3x the book
    told = [n for n in notices if "fail alike keep their first take" in n]
    assert len(told) == 1 and "no_stop, not_speech" in told[0], notices
    takes, _ = takes_by_chunk(tmp_path / "job")
    assert all([t["flags"][:2] for t in takes[name]] == [["no_stop", "not_speech"]] for name in NAMES)


def test_a_first_take_saved_but_not_recorded_is_measured_again(space, tiny_models_dir, tmp_path):
    """A kill between writing a chunk's first take and recording it: the resumed run measures the file
    again, so the chunks around it decide as the uninterrupted run did (no retakes, no file rewritten)."""
    import sqlite3

    noise = {(None, attempt): "noise" for attempt in (1, 2, 3)}
    generate(space, tiny_models_dir, tmp_path / "job", EspeakRenderer(defects=noise))
    before = chunk_bytes(tmp_path / "job")
    _, rows = takes_by_chunk(tmp_path / "job")
    db = sqlite3.connect(tmp_path / "job" / "job.sqlite")
    with db:
        db.execute("DELETE FROM takes WHERE cache_key = ?", (rows["0-1"].cache_key,))
    db.close()
    resumed = EspeakRenderer(defects=noise)
    generate(space, tiny_models_dir, tmp_path / "job", resumed)
    assert resumed.calls == [] and chunk_bytes(tmp_path / "job") == before
    takes, _ = takes_by_chunk(tmp_path / "job")
    assert [(t["attempt"], t["source"], t["flags"][:1]) for t in takes["0-1"]] == [(1, "recovered", ["not_speech"])]


def test_a_failure_unlike_its_neighbours_is_retried(space, tiny_models_dir, tmp_path):
    """Two noisy chunks then a good one: the noisy ones are bad luck, not the model, so both are retried."""
    renderer = EspeakRenderer(defects={("1-0", 1): "noise", ("1-1", 1): "noise"})
    generate(space, tiny_models_dir, tmp_path / "job", renderer)
    assert sorted((name, attempt) for name, attempt, _ in renderer.calls if attempt > 1) == [("1-0", 2), ("1-1", 2)]


def test_a_chunk_failing_differently_is_still_retried(space, tiny_models_dir, tmp_path):
    defects = {("0-0", 1): "noise", ("0-1", 1): "noise", ("0-2", 1): "loop"}
    renderer = EspeakRenderer(defects=defects)
    generate(space, tiny_models_dir, tmp_path / "job", renderer)
    retried = sorted(name for name, attempt, _ in renderer.calls if attempt > 1)
    assert retried == ["0-0", "0-1", "0-2"]  # 0-2's loop shares no check with the noise before it


def test_asr_catches_wrong_words_and_the_retry_fixes_them(space, tiny_models_dir, tmp_path):
    renderer = EspeakRenderer(defects={("0-3", 1): "different"})
    generate(space, tiny_models_dir, tmp_path / "job", renderer, asr=True)
    takes, _ = takes_by_chunk(tmp_path / "job")
    first, second = takes["0-3"]
    print("[qa] heard:", first["figures"]["asr_text"], "| then:", second["figures"]["asr_text"])
    assert first["flags"] == ["asr"] and first["figures"]["asr_recall"] < 0.6 and first["figures"]["asr"] == "pocketsphinx"
    assert second["flags"] == [] and second["figures"]["asr_recall"] >= 0.6
    assert kept_attempt(tmp_path / "job", "0-3") == 2
    assert all(takes[name][0]["figures"]["wer"] is not None for name in NAMES if name not in ("0-0", "1-0"))


def test_asr_model_mistakes_are_one_line(tmp_path):
    from tutortoietts.asr import make_recogniser

    with pytest.raises(UserError, match="must be a folder holding a faster-whisper"):
        make_recogniser(True, tmp_path / "no-such-model")
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install faster-whisper"):
            make_recogniser(True, tmp_path)


def test_a_killed_run_resumes_with_the_same_takes_and_bytes(space, tiny_models_dir, tmp_path):
    defects = {("0-2", 1): "loop", ("1-1", 1): "noise", ("1-1", 2): "silence"}
    whole = EspeakRenderer(defects=defects)
    generate(space, tiny_models_dir, tmp_path / "whole", whole)
    assert len(whole.calls) == len(NAMES) + 3
    # Ctrl-C as 1-1's second take starts: round 1 is done and 0-2 has passed on its second take.
    killed = EspeakRenderer(defects=defects, interrupt_at=len(NAMES) + 2)
    with pytest.raises(KeyboardInterrupt):
        generate(space, tiny_models_dir, tmp_path / "resumed", killed)
    resumed = EspeakRenderer(defects=defects)
    generate(space, tiny_models_dir, tmp_path / "resumed", resumed)
    # 1-1's first take came back from the job folder, not from a new render (each job has its own cache).
    assert [(name, attempt) for name, attempt, _ in resumed.calls] == [("1-1", 2), ("1-1", 3)]
    assert chunk_bytes(tmp_path / "resumed") == chunk_bytes(tmp_path / "whole")
    book = lambda job: hashlib.sha256(next(job.glob("*.wav")).read_bytes()).hexdigest()  # noqa: E731
    assert book(tmp_path / "resumed") == book(tmp_path / "whole")


# ---------------------------------------------------------------------------------------------
# redo


@pytest.fixture
def finished(space, tiny_models_dir, tmp_path, monkeypatch):
    """A finished job, and every later renderer (redo's) an EspeakRenderer the test can read."""
    generate(space, tiny_models_dir, tmp_path / "job", EspeakRenderer())
    later = EspeakRenderer()
    monkeypatch.setattr("tutortoietts.render.make_renderer", lambda *args, **kwargs: later)
    return tmp_path / "job", later


def test_redo_renders_named_chunks_with_new_seeds_and_restitches(finished):
    job_dir, renderer = finished
    before = chunk_bytes(job_dir)
    book = next(job_dir.glob("*.wav"))
    book_before = book.read_bytes()
    summary = redo(job_dir, ["0-2", "1-1"])
    assert [(name, attempt) for name, attempt, _ in renderer.calls] == [("0-2", 2), ("1-1", 2)]
    after = chunk_bytes(job_dir)
    assert sorted(name for name in before if before[name] != after[name]) == ["0-2.wav", "1-1.wav"]
    assert book.read_bytes() != book_before and summary.outputs[0] == book
    assert [(item["name"], item["attempt"], item["flags"]) for item in summary.redone] == [("0-2", 2, []), ("1-1", 2, [])]
    redo(job_dir, ["0-2"])  # again: the next seed
    assert renderer.calls[-1][:2] == ("0-2", 3) and kept_attempt(job_dir, "0-2") == 3


def test_redo_text_replaces_one_chunk_and_generate_keeps_it(finished, space, tiny_models_dir):
    job_dir, renderer = finished
    corrected = "Nobody expected the old clock to tick again."
    summary = redo(job_dir, ["0-3"], text=corrected)
    assert renderer.calls == [("0-3", 1, corrected)]  # new text, so its own first seed
    _, rows = takes_by_chunk(job_dir)
    assert rows["0-3"].text == corrected and summary.redone[0]["text"] == corrected
    again = EspeakRenderer()
    generate(space, tiny_models_dir, job_dir, again)  # the same manuscript: nothing to render, the correction stays
    assert again.calls == []
    _, rows = takes_by_chunk(job_dir)
    assert rows["0-3"].text == corrected


def test_redo_with_a_lexicon_renders_only_the_chunks_it_changes(finished, tmp_path):
    job_dir, renderer = finished
    lexicon = tmp_path / "fix.toml"
    lexicon.write_text('grandmother = "granny"\n', encoding="utf-8")
    before = chunk_bytes(job_dir)
    redo(job_dir, [], lexicon=lexicon)
    assert renderer.calls == [("1-2", 1, "My granny kept her letters in a wooden box under the bed.")]
    after = chunk_bytes(job_dir)
    assert [name for name in before if before[name] != after[name]] == ["1-2.wav"]


def test_redo_mistakes_are_one_line(finished, tmp_path, monkeypatch, capsys):
    job_dir, _ = finished
    for args, expected in [
        ([job_dir, "9-9"], "no chunk 9-9 in this job"),
        ([job_dir], "name the chunks to render again"),
        ([job_dir, "0-1", "0-2", "--text", "x"], "name exactly one chunk"),
        ([tmp_path / "nothing-here", "0-1"], "no job in"),
    ]:
        result = cli_in_process("redo", *args, monkeypatch=monkeypatch, capsys=capsys)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and expected in lines[0], result.stderr


def test_redo_refuses_when_the_manuscript_changed(finished, space):
    job_dir, _ = finished
    original = space["book"].read_text(encoding="utf-8")
    try:
        space["book"].write_text(original.replace("lazy dog", "sleepy dog"), encoding="utf-8")
        with pytest.raises(UserError, match="changed since this job was rendered"):
            redo(job_dir, ["0-2"])
    finally:
        space["book"].write_text(original, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# --lexicon


def test_lexicon_changes_only_the_chunks_holding_its_words(space, tiny_models_dir, tmp_path):
    from tutortoietts.render import plan_render

    lexicon = tmp_path / "book.lexicon.toml"
    lexicon.write_text('grandmother = "granny"\n[regex]\n\'\\bsea shore\\b\' = "seashore"\n', encoding="utf-8")
    plain = plan_render(request(space, tiny_models_dir, tmp_path / "job"))
    respelled = plan_render(request(space, tiny_models_dir, tmp_path / "job", lexicon=lexicon))
    changed = [f"{a.chapter}-{a.index}" for a, b in zip(plain.chunks, respelled.chunks) if a.cache_key != b.cache_key]
    assert changed == ["0-2", "1-2"]
    assert [c.text for c in respelled.chunks if f"{c.chapter}-{c.index}" == "1-2"] == [
        "My granny kept her letters in a wooden box under the bed."]
    assert [(a.chapter, a.index) for a in plain.chunks] == [(b.chapter, b.index) for b in respelled.chunks]
    generate(space, tiny_models_dir, tmp_path / "job", EspeakRenderer())
    again = EspeakRenderer()
    generate(space, tiny_models_dir, tmp_path / "job", again, lexicon=lexicon)
    assert sorted(name for name, _, _ in again.calls) == ["0-2", "1-2"]


def test_user_lexicon_applies_and_the_books_wins(space, tiny_models_dir, tmp_path, monkeypatch):
    from tutortoietts.lexicon import load_lexicon

    user = tmp_path / "user.toml"
    user.write_text('grandmother = "nana"\nboat = "bote"\n', encoding="utf-8")
    book = tmp_path / "book.toml"
    book.write_text('Grandmother = "granny"\n', encoding="utf-8")
    monkeypatch.setenv("TUTORTOIETTS_LEXICON", str(user))
    lexicon = load_lexicon(book)
    assert lexicon.apply("My Grandmother's boat, a boathouse.") == "My granny's bote, a boathouse."


@pytest.mark.parametrize("content, expected", [
    ("grandmother = ", "not valid TOML"),
    ("grandmother = 3\n", "must be a string"),
    ("[regex]\n'(unclosed' = \"x\"\n", "bad regex"),
    ('"two  spaces!" = "x"\n', "is not a word"),
])
def test_lexicon_mistakes_are_one_line(tmp_path, content, expected):
    from tutortoietts.lexicon import read_lexicon

    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=expected):
        read_lexicon(path)


def test_a_lexicon_that_overfills_a_chunk_is_refused(space, tiny_models_dir, tmp_path):
    from tutortoietts.render import plan_render

    lexicon = tmp_path / "long.toml"
    lexicon.write_text(f'boat = "{"very " * 300}boat"\n', encoding="utf-8")
    with pytest.raises(UserError, match="too long for one engine call after respelling"):
        plan_render(request(space, tiny_models_dir, tmp_path / "job", lexicon=lexicon))


def test_take_seeds_are_stable_and_distinct():
    seeds = [take_seed(12345, attempt) for attempt in range(1, 6)]
    assert seeds[0] == 12345 and len(set(seeds)) == 5
    assert seeds == [take_seed(12345, attempt) for attempt in range(1, 6)]
    assert all(0 <= seed < 2**31 for seed in seeds)


def test_retries_must_not_be_negative():
    with pytest.raises(UserError, match="--retries must be 0 or more"):
        gate.GateOptions(retries=-1)
