"""Ray (`generate --ray`): byte-identical to one process, an actor or the driver killed mid-run, faults, scheduling.

One local Ray instance (2 CPUs, 200 MB object store, no dashboard) serves the module: the CLI runs
join it by address, and the in-process tests use it directly. Tiny random weights: noise, not speech.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.cli_support import EXAMPLE_BOOK, FAST, ROOT, chunk_pcm, cli, cli_in_process, job_rows, one_error_line
from tutortoietts.cluster import IN_FLIGHT, Pending, Placement, RayRenderer, plan_actors, schedule
from tutortoietts.devtools.cluster_sim import SleepSpec
from tutortoietts.errors import UserError
from tutortoietts.renderers import RenderTask

# Slower than FAST on purpose: about a second a chunk, so that kills land mid-run.
SLOW = ["--preset", "ultra_fast_v2", "--set", "num_autoregressive_samples=2", "--set", "diffusion_iterations=24",
        "--device", "cpu", "--precision", "fp32"]
WORDS = "amber birch cedar delta ember fjord grove harbor island juniper kestrel lantern meadow north".split()


def write_book(path: Path) -> Path:
    """3 chapters of paragraphs of different lengths (one chunk each): 24 chunks."""
    rng = np.random.default_rng(7)
    lines = ["# The Cluster Book", ""]
    for chapter in range(3):
        lines += [f"## Part {chapter + 1}", ""]
        for paragraph in range(7):
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))
            lines += [f"Paragraph {paragraph + 1} of part {chapter + 1}: {words}.", ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def auth(workspace):
    """Token authentication for the test cluster, the token in the environment (nothing written to ~/.ray)."""
    values = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    yield {**workspace["env"], **values}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(auth):
    """One local Ray for the module: its address for the CLI runs; this process is connected too."""
    import logging

    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    yield {"address": ray.get_runtime_context().gcs_address, "env": auth}
    ray.shutdown()


def common(workspace, models, *settings):
    return ["--voice", workspace["voice"], "--models-dir", models, *settings, "--seed", "5", "--format", "wav", "--quiet"]


def book_pcm(out: Path) -> bytes:
    samples, _ = soundfile.read(next(out.glob("*.wav")), dtype="int16")
    return samples.tobytes()


def single_process(workspace, models, book, name, settings) -> dict:
    """The book rendered by one process (no Ray), with a cache of its own."""
    out = workspace["root"] / name
    env = {**workspace["env"], "TUTORTOIETTS_CACHE": str(workspace["root"] / f"{name}-cache")}
    cli("generate", book, "--out", out, *common(workspace, models, *settings), env=env)
    return {"out": out, "chunks": chunk_pcm(out), "pcm": book_pcm(out), "rows": job_rows(out)}


def assert_identical(out: Path, reference: dict) -> None:
    got = chunk_pcm(out)
    assert got.keys() == reference["chunks"].keys()
    different = [name for name in got if got[name].tobytes() != reference["chunks"][name].tobytes()]
    assert not different, f"chunks differ from the single-process render: {different}"
    assert book_pcm(out) == reference["pcm"]


def summary_line(stderr: str) -> str:
    """The driver's closing "ray: N chunk(s) rendered by ..." notice (Rich may have wrapped it)."""
    notices = " ".join(stderr.split()).split("note: ")
    return next(notice.strip() for notice in notices if "chunk(s) rendered by" in notice)


# ---------------------------------------------------------------- through the CLI


def test_without_ray_installed_is_one_line(workspace, models, monkeypatch, capsys):
    for key in ("TUTORTOIETTS_CACHE", "TUTORTOIETTS_VOICES"):
        monkeypatch.setenv(key, workspace["env"][key])
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    result = cli_in_process("generate", EXAMPLE_BOOK, *common(workspace, models, *FAST), "--ray",
                            monkeypatch=monkeypatch, capsys=capsys)
    line = one_error_line(result)
    assert "pip install 'tutortoietts[cluster]'" in line, line
    print(f"[cluster] without Ray: {line}")


def test_example_book_on_a_local_ray_is_identical_to_one_process(workspace, models, auth):
    reference = single_process(workspace, models, EXAMPLE_BOOK, "example-single", FAST)
    out = workspace["root"] / "example-ray"
    env = {**auth, "TUTORTOIETTS_CACHE": str(workspace["root"] / "example-ray-cache")}
    run = cli("generate", EXAMPLE_BOOK, "--out", out, *common(workspace, models, *FAST), "--ray", "--workers", "2", env=env)
    print(run.stderr)
    assert_identical(out, reference)
    rows = job_rows(out)
    assert all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows)
    line = summary_line(run.stderr)
    assert f"ray: {len(rows)} chunk(s) rendered by" in line and f"{len(rows)} sent, 0 re-queued" in line, line
    print(f"[cluster] example book, --ray --workers 2 (Ray started by the run): {len(rows)} chunks byte-identical "
          f"to one process; {run.seconds:.1f} s; {line.split('note: ')[-1]}")


@pytest.fixture(scope="module")
def cluster_book(workspace, models):
    book = write_book(workspace["root"] / "cluster-book.md")
    return {"book": book, "reference": single_process(workspace, models, book, "cluster-single", SLOW)}


class StderrLines:
    """A running CLI's stderr, line by line, as it comes."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process):
        for line in process.stderr:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "\n".join(self.lines)


def start(book, out, workspace, models, cluster, cache: Path, *extra: str):
    env = {**cluster["env"], "TUTORTOIETTS_CACHE": str(cache)}
    command = [sys.executable, "-m", "tutortoietts.cli", "generate", str(book), "--out", str(out),
               *map(str, common(workspace, models, *SLOW)), "--ray", cluster["address"], "--workers", "2", *extra]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, command, env


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def written(out: Path) -> int:
    """Chunk audio files the driver has written so far (the job's chunks, and any kept takes)."""
    return sum(1 for _ in (out / "chunks").rglob("*.wav")) if (out / "chunks").is_dir() else 0


def test_an_actor_killed_mid_run(workspace, models, cluster, cluster_book):
    out = workspace["root"] / "actor-killed"
    process, _, _ = start(cluster_book["book"], out, workspace, models, cluster, workspace["root"] / "actor-killed-cache")
    stderr = StderrLines(process)
    total = len(cluster_book["reference"]["rows"])
    deadline = time.time() + 240
    pids, loaded = {}, None
    while process.poll() is None and time.time() < deadline:
        for line in stderr.lines:
            found = re.search(r"actor (\d+) ready on .* pid (\d+)", line)
            if found:
                pids[int(found.group(1))] = int(found.group(2))
        if len(pids) == 2:
            loaded = loaded if loaded is not None else cpu_seconds(pids[1])  # the engine is loaded by then
            if cpu_seconds(pids[1]) - loaded >= 1.0:  # a second into rendering: it holds chunks now
                break
        time.sleep(0.02)
    assert len(pids) == 2 and process.poll() is None, "\n".join(stderr.lines)
    os.kill(pids[1], signal.SIGKILL)  # as the kernel's OOM killer would
    process.wait(timeout=300)
    text = stderr.text()
    print(text)
    assert process.returncode == 0, text
    died = next(notice for notice in " ".join(text.split()).split("note: ") if re.match(r"ray: actor 1 .* died \(", notice))
    requeued = int(re.search(r"(\d+) chunk\(s\) re-queued", died).group(1))
    assert requeued >= 1, died
    line = summary_line(text)
    # Sent once each, plus once more for each chunk the dead actor held: nothing else was rendered twice.
    assert f"{total + requeued} sent, {requeued} re-queued after an actor died" in line, line
    rows = job_rows(out)
    assert len(rows) == total and all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows), rows
    assert_identical(out, cluster_book["reference"])
    print(f"[cluster] actor 1 SIGKILLed mid-run: {requeued} chunk(s) it held re-queued, each chunk written once, "
          f"book byte-identical to one process; {line}")


def test_the_driver_killed_mid_run_resumes(workspace, models, cluster, cluster_book):
    out = workspace["root"] / "driver-killed"
    cache = workspace["root"] / "driver-killed-cache"
    # --retries 0: the quality gate's retakes are left out here. With them on, a resumed run once
    # retook a chunk whose neighbours had finished before the kill (Ray finishes chunks out of book
    # order), and kept another take: a gate matter, reported, not the cluster's.
    process, command, env = start(cluster_book["book"], out, workspace, models, cluster, cache, "--retries", "0")
    total = len(cluster_book["reference"]["rows"])
    deadline = time.time() + 240
    while written(out) < 6 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = written(out)
    before = {path: path.stat().st_mtime_ns for path in (out / "chunks").glob("*.wav")}  # finished chunks
    assert 6 <= saved and len(before) < total, f"{saved} files, {len(before)} of {total} chunks when the driver was killed"
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(again.stderr)
    assert again.returncode == 0, again.stderr
    rows = job_rows(out)
    assert all(status == "done" and attempts == 1 for _, _, status, attempts, *_ in rows), rows
    assert {path: path.stat().st_mtime_ns for path in before} == before  # nothing written is written again
    rendered = int(re.search(r"ray: (\d+) chunk\(s\) rendered", summary_line(again.stderr)).group(1))
    assert rendered <= total - saved  # only what was not saved (less any the killed run had cached)
    assert_identical(out, cluster_book["reference"])
    print(f"[cluster] driver SIGKILLed with {saved} of {total} chunks' audio saved; the same command rendered "
          f"{rendered} more, saved chunks untouched, book byte-identical to one process")


# ---------------------------------------------------------------- the renderer itself, on simulated actors


def tasks(count: int, chapters: int = 2) -> list[RenderTask]:
    return [RenderTask(f"{n % chapters}-{n}", f"chunk number {n} " + "x" * (n % 5), seed=n) for n in range(count)]


def render_with(spec: SleepSpec, items: list[RenderTask], actors: int = 2):
    renderer = RayRenderer(spec, "auto", "cpu", lambda tts: tts.random_voice(0), placement=Placement(actors, 0, 0, "cpu"))
    notices = []
    renderer.notify = notices.extend
    results = {}
    for result in renderer.render(items):
        assert result.task.name not in results, f"{result.task.name} came back twice"
        results[result.task.name] = result
    renderer.close()
    return renderer, results, notices


def test_a_chunk_that_raises_is_tried_on_two_actors_then_failed(cluster):
    items = tasks(8)
    renderer, results, notices = render_with(SleepSpec(seconds=0.05, audio_seconds=0.5, fail_on="number 3 "), items)
    assert results.keys() == {task.name for task in items}
    failed = {name: result for name, result in results.items() if result.error}
    assert list(failed) == ["1-3"], failed
    assert failed["1-3"].error.count("simulated failure") == 2
    assert len(set(re.findall(r"actor (\d+)", failed["1-3"].error))) == 2  # on two different actors
    assert renderer.retried == 1 and renderer.dispatched == len(items) + 1
    assert all(result.samples is not None and result.computed_ar for name, result in results.items() if name != "1-3")
    print(f"[cluster] a chunk that raises: tried twice, then failed: {failed['1-3'].error}")


def test_a_chunk_that_kills_its_actor_is_failed_after_two_deaths(cluster):
    items = tasks(10)
    renderer, results, notices = render_with(SleepSpec(seconds=0.05, audio_seconds=0.5, die_on="number 4 "), items)
    print("\n".join(notices))
    assert results.keys() == {task.name for task in items}
    failed = [name for name, result in results.items() if result.error]
    assert failed == ["0-4"] and "died 2 times" in results["0-4"].error, results["0-4"].error
    assert sum(bool(re.match(r"ray: actor \d+ .* died \(", notice)) for notice in notices) == 2
    assert renderer.replacements == 2
    assert all(results[name].samples is not None for name in results if name != "0-4")
    # Every death re-queues what its actor held: the chunk that killed it, and at most one waiting behind it.
    assert renderer.dispatched == len(items) + renderer.requeued and renderer.requeued <= 2 * IN_FLIGHT


def test_results_are_the_same_whichever_actor_renders(cluster):
    items = tasks(12, chapters=3)
    _, one, _ = render_with(SleepSpec(seconds=0.0, audio_seconds=0.2), items, actors=1)
    _, three, _ = render_with(SleepSpec(seconds=0.0, audio_seconds=0.2), list(reversed(items)), actors=3)
    assert {n: r.samples.numpy().tobytes() for n, r in one.items()} == {n: r.samples.numpy().tobytes() for n, r in three.items()}


# ---------------------------------------------------------------- scheduling and placement (no Ray needed)


def pending(chapter: int, index: int, cost: float) -> Pending:
    return Pending(RenderTask(f"{chapter}-{index}", "x" * int(cost), seed=0), cost, chapter)


def test_schedule_keeps_chapters_together_and_ends_longest_first():
    # 10 chapters of 10 chunks, costs 10..100; 2 actors: the tail must hold 2 x 2 x 100 = 400 of work.
    items = [pending(chapter, index, 10 * (1 + (index * 7 + chapter) % 10)) for chapter in range(10) for index in range(10)]
    order = schedule(items, actors=2)
    assert sorted(map(id, order)) == sorted(map(id, items))  # each chunk once
    body = [item for item in order if item.chapter < 9]
    tail = [item for item in order if item.chapter >= 9]
    assert order[-len(tail):] == tail  # the last chapter (550 of work) is the tail
    assert [item.chapter for item in body] == sorted(item.chapter for item in body)  # whole chapters, in order
    for chapter in range(9):
        costs = [item.cost for item in body if item.chapter == chapter]
        assert costs == sorted(costs, reverse=True)
    assert [item.cost for item in tail] == sorted((item.cost for item in tail), reverse=True)
    assert order[-1].cost == 10  # the very last chunk sent is a shortest one
    # Actors taking 4 chunks a call: the tail grows to 2 x 2 x 4 x 100 = 1600 of work, three chapters.
    order = schedule(items, actors=2, batch=4)
    assert {item.chapter for item in order[-30:]} == {7, 8, 9} and {item.chapter for item in order[:-30]} == set(range(7))
    assert [item.cost for item in order[-30:]] == sorted((item.cost for item in order[-30:]), reverse=True)


def test_schedule_of_a_small_book_is_longest_first():
    items = [pending(chapter, index, cost) for chapter, index, cost in [(0, 0, 5), (0, 1, 50), (1, 0, 20), (1, 1, 40)]]
    assert [item.cost for item in schedule(items, actors=2)] == [50, 40, 20, 5]


def test_placement():
    gpu_nodes = [{"CPU": 16, "GPU": 8}, {"CPU": 8, "GPU": 4}]
    assert plan_actors(gpu_nodes, "auto", None) == Placement(12, 1, 2, "cuda")
    assert plan_actors(gpu_nodes, "cuda", 5) == Placement(5, 1, 2, "cuda")
    assert plan_actors(gpu_nodes, "cpu", 3) == Placement(3, 0, 8, "cpu")
    cpu_nodes = [{"CPU": 2}, {"CPU": 8}]
    assert plan_actors(cpu_nodes, "auto", None) == Placement(2, 0, 2, "cpu")  # one per machine
    assert plan_actors(cpu_nodes, "auto", 2) == Placement(2, 0, 4, "cpu")  # 5 cores each would fit only one
    assert plan_actors([{"CPU": 2}], "cpu", 2) == Placement(2, 0, 1, "cpu")
    assert plan_actors([{"CPU": 2}], "cpu", 8) == Placement(2, 0, 1, "cpu")
    with pytest.raises(UserError, match="no GPU"):
        plan_actors(cpu_nodes, "cuda", None)


def test_progress_lists_each_actor_with_its_throughput():
    from rich.console import Console

    from tutortoietts.cluster import WorkerStat
    from tutortoietts.commands.generate import worker_table

    stats = (WorkerStat("actor 1", "gpu-a cuda:0 (GPU 0)", "ready", 30, 300.0, 55.0, 60.0),
             WorkerStat("actor 2", "gpu-b cuda:0 (GPU 3)", "dead", 3, 24.0, 9.0, 12.0))
    console = Console(record=True, width=120)
    console.print(worker_table(stats))
    text = console.export_text()
    print(text)
    assert "actor 1" in text and "gpu-a cuda:0 (GPU 0)" in text and "30.0" in text and "5.00" in text  # 30/min, 5 s/s
    assert "actor 2" in text and "dead" in text and "15.0" in text and "2.00" in text


def test_actors_stay_up_between_rounds(cluster):
    # The quality gate renders retakes in later rounds: the same actors take them, no engine loads again.
    renderer = RayRenderer(SleepSpec(seconds=0.0, audio_seconds=0.2), "auto", "cpu", lambda tts: tts.random_voice(0),
                           placement=Placement(2, 0, 0, "cpu"))
    first = {result.task.name for result in renderer.render(tasks(6))}
    second = {result.task.name for result in renderer.render(tasks(3))}
    assert len(first) == 6 and len(second) == 3 and len(renderer.actors) == 2 and renderer.dispatched == 9
    renderer.close()
    assert [actor.state for actor in renderer.actors] == ["stopped", "stopped"]
