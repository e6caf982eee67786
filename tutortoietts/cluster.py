"""Ray: one book rendered by many engines at once, one per GPU (or per share of CPU cores), on one machine or many.

RayRenderer is a Renderer (renderers.py) like the others: the render loop hands it tasks and takes
results back as they finish, and stays the only process that writes the job folder and the cache.
Each Ray actor (cluster_worker.py) holds one loaded engine and renders the batches it is sent. Audio
and autoregressive results come back through Ray's object store as numpy arrays, so no filesystem is
shared: an actor needs only the weights, on its own disk (checked against the driver's fingerprint).
The voice is computed once, by one actor or from the driver's cache, and shared through the object store.

Faults: an actor that dies (killed, out of memory, node lost) has the chunks it held re-queued on the
others (the ones it was rendering go alone next time), and a replacement is started, which Ray places
when resources allow.
A chunk whose actor died twice while rendering it, or that raised on two actors, comes back as a
failed chunk like any other. Results depend only on the task (text, seed, settings, voice), never
on which actor rendered it or what ran beside it.

This module imports neither torch nor Ray at import time: actors of the scale simulation
(devtools/cluster_sim.py) run without torch, and a missing Ray is one clear line.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

from tutortoietts.cluster_worker import EngineSpec, RenderActor, ar_from_wire, as_tensor, task_to_wire
from tutortoietts.errors import UserError

INSTALL_HINT = "pip install 'tutortoietts[cluster]'"
IN_FLIGHT = 2  # batches queued on each actor: one rendering, the next waiting, so it never idles between batches
MAX_DEATHS = 2  # a chunk that was rendering on this many actors when they died is failed (it may be what kills them)
MAX_ERRORS = 2  # a chunk that raised on this many different actors is failed
AUDIO_ONLY_COST = 0.5  # a task with cached codes runs the audio stages only: about half of a chunk (README benchmarks)
START_TIMEOUT = float(os.environ.get("TUTORTOIETTS_RAY_START_TIMEOUT", "900"))  # seconds with no actor able to work


def import_ray():
    """The ray module, or the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_address(address: str) -> str:
    """'local' (start Ray in this process), 'auto' (the cluster this machine joined), ray://HOST:PORT or HOST:PORT."""
    if address in ("local", "auto") or address.startswith("ray://"):
        return address
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit():
        return address
    raise UserError(f"--ray {address!r}: give auto, ray://HOST:PORT or HOST:PORT, or --ray alone (after the book) "
                    f"to start Ray on this machine")


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def connect(address: str) -> bool:
    """Join the cluster at `address` ('local' starts one here); True when this call started Ray (and should stop it)."""
    ray = import_ray()
    if ray.is_initialized():
        return False  # already connected: a program that embeds the render loop, or the tests
    options = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address == "local":
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as error:
        where = "start Ray on this machine" if address == "local" else f"join the Ray cluster at {address}"
        chain = f"{error} {error.__cause__}"
        hint = ("; the cluster wants its token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or copy ~/.ray/auth_token "
                "from the head)") if "AuthToken" in chain or "Authentication" in chain else ""
        raise UserError(f"cannot {where}: {first_line(error)}{hint}") from None
    return address == "local"


# ---------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """How many actors, and what each one asks Ray for."""

    actors: int
    gpus: int  # per actor: 1 on a GPU cluster, else 0
    cpus: int  # per actor, and its torch threads
    device: str  # what each engine loads on: "cuda" (the GPU Ray gave it) or "cpu"

    def describe(self) -> str:
        each = "1 GPU" if self.gpus else f"{self.cpus} CPU core{'s' if self.cpus > 1 else ''}"
        return f"{self.actors} actor{'s' if self.actors > 1 else ''}, {each} each"


def plan_actors(nodes: list[dict], device: str, workers: int | None) -> Placement:
    """One actor per GPU of the cluster, or, without GPUs (or with --device cpu), one per node or
    --workers N of them on equal shares of the cores. `nodes`: each alive node's Ray resources."""
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) >= 1]
    if device != "cpu" and gpu_nodes:
        total = sum(int(node["GPU"]) for node in gpu_nodes)
        # Host-side work (mels, sampling glue) gets the node's cores shared out between its GPUs.
        cpus = max(1, min(int(node.get("CPU", 0)) // int(node["GPU"]) for node in gpu_nodes))
        return Placement(min(total, workers or total), 1, cpus, "cuda")
    if device.startswith("cuda"):
        raise UserError(f"--device {device}: the Ray cluster has no GPU; use --device cpu (or auto) to render on its CPUs")
    cores = [int(node.get("CPU", 0)) for node in nodes if node.get("CPU", 0) >= 1]
    if not cores:
        raise UserError("the Ray cluster has no CPU or GPU to render on")
    if workers is None:
        share = min(cores)  # one engine per machine, on all of its cores
    else:  # the largest equal share that still fits `workers` actors on the machines as they are
        largest = max(1, min(sum(cores) // workers, max(cores)))
        share = next((s for s in range(largest, 0, -1) if sum(count // s for count in cores) >= workers), 1)
    fits = sum(count // share for count in cores)
    return Placement(max(1, min(workers or len(cores), fits)), 0, share, "cpu")


# ---------------------------------------------------------------- scheduling


@dataclass(eq=False)
class Pending:
    """A task on its way through the cluster, with what happened to it so far."""

    task: object  # RenderTask
    cost: float  # estimated compute, in characters of text
    chapter: int
    deaths: int = 0  # actors that died while rendering it
    errors: list = field(default_factory=list)  # what it raised, one per actor tried
    tried: set = field(default_factory=set)  # actors it raised on: a retry goes elsewhere


def pending_for(task) -> Pending:
    chapter = task.name.split("-", 1)[0]
    cost = len(task.text) * (AUDIO_ONLY_COST if task.ar is not None else 1.0)
    return Pending(task, max(cost, 1.0), int(chapter) if chapter.isdigit() else 0)


def schedule(items: list[Pending], actors: int, batch: int = 1) -> list[Pending]:
    """The order chunks go out in: book order with whole chapters together, then a tail, longest first.

    Only the end of a run decides its length: the last chunks sent should be short, so that no actor
    is still busy with a long one while the others have nothing left (longest processing time first,
    Graham 1969). So the last chapters, enough of them to hold two rounds of the longest `batch`
    chunks on every actor, are held back and sent longest-first. Before them the order costs
    nothing, and chapters go out one after another, each longest-first (similar lengths batch
    well), so they complete in order.
    """
    if not items:
        return []
    reserve = 2 * max(1, actors) * batch * max(item.cost for item in items)
    chapters: dict[int, list[Pending]] = {}
    for item in items:
        chapters.setdefault(item.chapter, []).append(item)
    tail: list[Pending] = []
    held = 0.0
    for number in sorted(chapters, reverse=True):
        if held >= reserve:
            break
        chapter = chapters.pop(number)
        tail += chapter
        held += sum(item.cost for item in chapter)
    order = [item for number in sorted(chapters) for item in sorted(chapters[number], key=lambda i: -i.cost)]
    return order + sorted(tail, key=lambda i: (-i.cost, i.chapter))


# ---------------------------------------------------------------- the driver's side


@dataclass(frozen=True)
class WorkerStat:
    """One actor as the progress display shows it."""

    name: str  # "actor 3"
    where: str  # host and device
    state: str  # "starting" | "ready" | "dead" | "stopped"
    chunks: int
    audio_seconds: float
    compute_seconds: float  # summed over its chunks
    wall_seconds: float  # since it was ready

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def audio_per_second(self) -> float:
        """Seconds of audio made per wall second (the inverse of its real-time factor)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(eq=False)
class Actor:
    number: int
    handle: object
    start_ref: object
    state: str = "starting"
    info: dict = field(default_factory=dict)
    inflight: deque = field(default_factory=deque)  # (ObjectRef, [Pending]) in the order they run
    chunks: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    ready_at: float = 0.0
    ended_at: float = 0.0
    batch: int = 1  # chunks per call: what its renderer takes at once

    @property
    def where(self) -> str:
        return f"{self.info.get('host', '?')} {self.info.get('device', '')}".strip()

    def stat(self, now: float) -> WorkerStat:
        wall = ((self.ended_at or now) - self.ready_at) if self.ready_at else 0.0
        return WorkerStat(f"actor {self.number}", self.where, self.state, self.chunks, self.audio_seconds,
                          self.compute_seconds, wall)


class RemoteEngine:
    """The engine's two voice methods, run on one actor: what render.voice_resolver needs, so the
    voice is taken from the driver's cache or computed once, then shared."""

    def __init__(self, call: Callable[[tuple], tuple]):
        self._call = call

    def random_voice(self, seed: int):
        return self._latents(("random", int(seed)))

    def voice_latents(self, clips):
        return self._latents(("clips", [clip.reshape(-1).float().cpu().numpy() for clip in clips]))

    def _latents(self, request):
        from tutortoietts.engine.pipeline import VoiceLatents

        autoregressive, diffusion = self._call(request)
        return VoiceLatents(as_tensor(autoregressive), as_tensor(diffusion))


class RayRenderer:
    """Renders on Ray actors, one engine each; results come back to this process in any order."""

    def __init__(self, spec, address: str, device: str, voice_latents: Callable[[object], object],
                 workers: int | None = None, placement: Placement | None = None, start_together: bool = False):
        """spec: what each actor loads (EngineSpec, or the simulation's sleeper); voice_latents: tts ->
        VoiceLatents (render.voice_resolver); placement: fixed instead of planned from the cluster's
        resources; start_together: send nothing until every actor is ready (for measurements)."""
        import_ray()  # before any work: a missing Ray is one line
        self.spec = spec
        self.address = check_address(address)
        self.device = device
        self.voice_latents = voice_latents
        self.workers = workers
        self.fixed_placement = placement
        self.placement = placement  # what this round's actors ask for (set when they start)
        self.start_together = start_together
        self.notify: Callable[[list[str]], None] = lambda messages: None  # set by the progress tracker
        self.actors: list[Actor] = []
        self.owner: dict = {}  # ObjectRef -> Actor, for every call not yet answered
        self.retrying: set = set()  # queued chunks that raised somewhere: they avoid the actors they raised on
        self.dispatched = 0  # chunk renders sent out
        self.requeued = 0  # chunks sent again because their actor died
        self.retried = 0  # chunks sent again because they raised
        self.replacements = 0
        self.first_sent_at = 0.0  # perf_counter of the first batch sent, and of the last result taken
        self.last_result_at = 0.0
        self.wait_seconds = 0.0  # blocked in ray.wait after the first batch: the rest of the time the driver worked
        self._ray = None
        self._started_ray = False
        self._actor_class = None

    @property
    def loaded(self) -> bool:
        return any(actor.ready_at for actor in self.actors)

    def worker_stats(self) -> tuple:
        now = time.perf_counter()
        return tuple(actor.stat(now) for actor in self.actors)

    # -- the loop

    def render(self, tasks: Iterable) -> Iterator:
        """One round of tasks. The actors stay up for the next round (the quality gate's retakes);
        they end with this process, or at once when a round is abandoned (an error, Ctrl-C)."""
        items = [pending_for(task) for task in tasks]  # the render loop saves cache hits while we take them
        if not items:
            return
        if self._ray is None:
            self._ray = import_ray()
            self._started_ray = connect(self.address)
        finished = False
        try:
            yield from self._run(items)
            finished = True
        finally:
            if self.dispatched:
                self.notify([self.summary()])
            if not finished:
                self.close()

    def _run(self, items: list[Pending]) -> Iterator:
        ray = self._ray
        if not any(actor.state in ("starting", "ready") for actor in self.actors):  # the first round, or after close()
            nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
            placement = self.fixed_placement or plan_actors(nodes, self.device, self.workers)
            self.placement = replace(placement, actors=min(placement.actors, len(items)))
            cluster = ray.cluster_resources()
            self.notify([f"ray: {self.placement.describe()} on a cluster of {len(nodes)} node(s), "
                         f"{int(cluster.get('GPU', 0))} GPU(s), {int(cluster.get('CPU', 0))} CPU core(s)"])
            for _ in range(self.placement.actors):
                self._start_actor()
        voice = self.voice_latents(RemoteEngine(self._voice_call))  # waits for the first actor if not cached
        voice_ref = ray.put((voice.autoregressive.float().cpu().numpy(), voice.diffusion.float().cpu().numpy()))
        batch = max([actor.batch for actor in self.actors if actor.state == "ready"] or [1])
        queue = deque(schedule(items, self.placement.actors, batch))
        remaining, idle_since = len(items), None
        while remaining:
            for result in self._unplaceable(queue):
                remaining -= 1
                yield result
            if not remaining:
                break
            if not self.start_together or all(actor.state != "starting" for actor in self.actors):
                self._dispatch(queue, voice_ref)
            if not self.owner:
                raise UserError("every Ray actor is gone and no replacement could be started; the finished chunks "
                                "are saved: run the same command again")
            blocked = time.perf_counter()
            done, _ = ray.wait(list(self.owner), num_returns=1, timeout=10.0)
            if self.first_sent_at:
                self.wait_seconds += time.perf_counter() - blocked
            if not done:
                idle_since = self._check_stalled(idle_since)
                continue
            idle_since = None
            ref = done[0]
            actor = self.owner.pop(ref)
            if ref is actor.start_ref:
                self._started(actor, ref)
                continue
            for result in self._collect(actor, ref, queue):
                remaining -= 1
                self.last_result_at = time.perf_counter()
                yield result

    # -- actors

    def _start_actor(self) -> None:
        ray = self._ray
        options = {"num_cpus": self.placement.cpus, "num_gpus": self.placement.gpus, "max_restarts": 0}
        spec = replace(self.spec, device=self.placement.device) if isinstance(self.spec, EngineSpec) else self.spec
        if self._actor_class is None:
            self._actor_class = ray.remote(RenderActor)
        handle = self._actor_class.options(**options).remote(spec, self.placement.cpus)
        actor = Actor(len(self.actors) + 1, handle, handle.start.remote())
        self.actors.append(actor)
        self.owner[actor.start_ref] = actor

    def _started(self, actor: Actor, ref) -> None:
        ray = self._ray
        try:
            actor.info = ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            self._setup_error(actor, error)
            return
        except ray.exceptions.RayError as error:
            self._died(actor, error, deque())
            return
        actor.state, actor.ready_at, actor.batch = "ready", time.perf_counter(), max(1, int(actor.info.get("batch", 1)))
        self.notify([f"ray: actor {actor.number} ready on {actor.info['host']} ({actor.info['ip']}), "
                     f"{actor.info['device']}, {actor.info['threads']} thread(s), {actor.batch} chunk(s) a batch, "
                     f"pid {actor.info['pid']}"])

    def _setup_error(self, actor: Actor, error) -> None:
        """An engine that will not load: everyone's problem when it is the only one left, else its node's."""
        actor.state, actor.ended_at = "dead", time.perf_counter()
        self._ray.kill(actor.handle)
        cause = remote_cause(error)
        if not isinstance(cause, UserError) or not any(a.state in ("starting", "ready") for a in self.actors):
            raise cause from None
        self.notify([f"ray: actor {actor.number} could not start, carrying on without it: {first_line(cause)}"])

    def _voice_call(self, request: tuple) -> tuple:
        """The voice, computed on the first actor to be ready (another one if that one dies)."""
        ray = self._ray
        while True:
            ready = [actor for actor in self.actors if actor.state == "ready"]
            if not ready:
                starting = [actor.start_ref for actor in self.actors if actor.state == "starting"]
                if not starting:
                    raise UserError("no Ray actor could start to compute the voice")
                done, _ = ray.wait(starting, num_returns=1, timeout=START_TIMEOUT)
                if not done:
                    raise UserError(f"no Ray actor started within {START_TIMEOUT:.0f} s; is the cluster short of "
                                    f"{'GPUs' if self.placement.gpus else 'CPU cores'}?")
                self._started(self.owner.pop(done[0]), done[0])
                continue
            try:
                return ray.get(ready[0].handle.voice.remote(request))
            except ray.exceptions.RayTaskError as error:
                raise remote_cause(error) from None
            except ray.exceptions.RayError as error:
                self._died(ready[0], error, deque())

    # -- work out, results in

    def _dispatch(self, queue: deque, voice_ref) -> None:
        """Fill every ready actor to IN_FLIGHT calls, round by round so that the first ones spread out."""
        ready = [actor for actor in self.actors if actor.state == "ready"]
        for depth in range(IN_FLIGHT):
            for actor in ready:
                if len(actor.inflight) > depth or not queue:
                    continue
                batch = self._take(queue, actor)
                if not batch:
                    continue
                ref = actor.handle.render.remote([task_to_wire(item.task) for item in batch], voice_ref)
                actor.inflight.append((ref, batch))
                self.owner[ref] = actor
                self.dispatched += len(batch)
                self.first_sent_at = self.first_sent_at or time.perf_counter()

    def _take(self, queue: deque, actor: Actor) -> list[Pending]:
        """The next chunks for this actor: up to its batch but no more than its share of what is left
        (the end of a run, or actors still loading, would otherwise find one actor holding it all);
        none it raised on; a chunk whose actor died goes alone."""
        live = sum(a.state in ("starting", "ready") for a in self.actors)
        size = min(actor.batch, -(-len(queue) // (max(1, live) * IN_FLIGHT)))
        batch, passed = [], []
        while queue and len(batch) < size:
            item = queue.popleft()
            if actor.number in item.tried or (item.deaths and batch):
                passed.append(item)
                continue
            batch.append(item)
            self.retrying.discard(item)
            if item.deaths:
                break  # alone: if this actor dies too, the chunk is known to be the cause
        queue.extendleft(reversed(passed))
        return batch

    def _unplaceable(self, queue: deque) -> list:
        """Queued chunks that raised on every live actor: failed now rather than waiting for ever."""
        live = {actor.number for actor in self.actors if actor.state in ("starting", "ready")}
        stuck = [item for item in self.retrying if live <= item.tried]
        for item in stuck:
            queue.remove(item)
            self.retrying.discard(item)
        return [self._failed(item, "; ".join(item.errors)) for item in stuck]

    def _collect(self, actor: Actor, ref, queue: deque) -> list:
        """The results of one finished call; an actor that died re-queues what it held."""
        ray = self._ray
        entry = next(entry for entry in actor.inflight if entry[0] is ref)
        try:
            records = ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            raise remote_cause(error) from None
        except ray.exceptions.RayError as error:  # actor died, worker crashed, node lost, object lost
            return self._died(actor, error, queue)
        actor.inflight.remove(entry)
        return self._results(actor, entry[1], records, queue)

    def _results(self, actor: Actor, batch: list[Pending], records: list[dict], queue: deque) -> list:
        from tutortoietts.renderers import RenderResult

        by_name = {item.task.name: item for item in batch}
        out = []
        for record in records:
            item = by_name[record["name"]]
            if record["error"] is not None:
                item.errors.append(f"{record['error']} (actor {actor.number} on {actor.where})")
                item.tried.add(actor.number)
                others = [a for a in self.actors if a.state in ("starting", "ready") and a.number not in item.tried]
                if len(item.errors) < MAX_ERRORS and others:
                    self.retried += 1
                    self.retrying.add(item)
                    queue.appendleft(item)
                    continue
                out.append(self._failed(item, "; ".join(item.errors), record["seconds"]))
                continue
            samples = as_tensor(record["samples"])
            ar = item.task.ar if record["ar"] is None else ar_from_wire(record["ar"])
            actor.chunks += 1
            actor.audio_seconds += samples.numel() / record["sample_rate"]
            actor.compute_seconds += record["seconds"]
            out.append(RenderResult(item.task, samples, record["sample_rate"], ar, seconds=record["seconds"]))
        return out

    def _failed(self, item: Pending, message: str, seconds: float = 0.0):
        from tutortoietts.renderers import RenderResult

        return RenderResult(item.task, error=message, seconds=seconds)

    # -- faults

    def _died(self, actor: Actor, error, queue: deque) -> list:
        """Keep what it finished, re-queue the rest at the front, start a replacement."""
        ray = self._ray
        actor.state, actor.ended_at = "dead", time.perf_counter()
        self.owner = {ref: owner for ref, owner in self.owner.items() if owner is not actor}
        out, requeue, blamed = [], [], False
        for ref, batch in actor.inflight:
            try:
                out += self._results(actor, batch, ray.get(ref, timeout=0), queue)  # finished before it died
                continue
            except (ray.exceptions.RayError, TimeoutError):
                pass
            for item in batch:
                if not blamed:
                    item.deaths += 1  # an actor runs its calls in order: the first unfinished one was running
                if item.deaths >= MAX_DEATHS:
                    out.append(self._failed(item, f"the Ray actors rendering it died {item.deaths} times "
                                                  f"(last: {first_line(error)})"))
                else:
                    requeue.append(item)
            blamed = True
        actor.inflight.clear()
        queue.extendleft(reversed(requeue))
        self.requeued += len(requeue)
        try:
            ray.kill(actor.handle)
        except Exception:  # already gone
            pass
        replaced = self._replace()
        self.notify([f"ray: actor {actor.number} on {actor.where or 'its node'} died ({first_line(error)[:160]}); "
                     f"{len(requeue)} chunk(s) re-queued on the others"
                     + ("; starting a replacement" if replaced else "; no replacement (too many deaths)")])
        return out

    def _replace(self) -> bool:
        """A new actor in place of a dead one; Ray places it when resources allow (a lost node's never
        come back, and then it just waits). Bounded, so that a fault that kills every engine ends."""
        if self.replacements >= 2 * max(1, self.placement.actors):
            return False
        self.replacements += 1
        self._start_actor()
        return True

    def _check_stalled(self, idle_since: float | None) -> float | None:
        now = time.perf_counter()
        if any(actor.inflight for actor in self.actors):
            return None
        idle_since = idle_since or now
        if now - idle_since > START_TIMEOUT:
            raise UserError(f"no Ray actor could render for {START_TIMEOUT:.0f} s (the cluster is short of "
                            f"{'GPUs' if self.placement.gpus else 'CPU cores'}?); the finished chunks are saved: "
                            f"run the same command again")
        return idle_since

    def summary(self) -> str:
        now = time.perf_counter()
        done = [actor for actor in self.actors if actor.chunks]
        parts = ", ".join(f"actor {a.number} {a.chunks} ({a.stat(now).chunks_per_second:.2f}/s, "
                          f"{a.compute_seconds:.1f} s computing)" for a in done)
        return (f"ray: {sum(a.chunks for a in self.actors)} chunk(s) rendered by {len(done)} actor(s) ({parts}); "
                f"{self.dispatched} sent, {self.requeued} re-queued after an actor died, {self.retried} retried "
                f"after an error, {self.replacements} replacement actor(s)")

    def close(self) -> None:
        """Stop every actor now (freeing its GPU) and Ray itself when this process started it."""
        ray = self._ray
        if ray is None:
            return
        for actor in self.actors:
            if actor.state in ("starting", "ready"):
                actor.state, actor.ended_at = "stopped", time.perf_counter()
            try:
                ray.kill(actor.handle)  # frees its GPU now, not when this process exits
            except Exception:  # already gone
                pass
        self.owner.clear()
        if self._started_ray:
            ray.shutdown()
            self._ray, self._started_ray = None, False


def remote_cause(error) -> BaseException:
    """The exception raised inside an actor: a UserError (weights missing on that node, a bad clip)
    stays one line; anything else is a bug and keeps Ray's report."""
    cause = getattr(error, "cause", None)
    return UserError(str(cause)) if isinstance(cause, UserError) else error
