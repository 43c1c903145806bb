"""Pods bound to a cell's Node become tasks on the gateway; task events become pod status.

The shell around the pure lifecycle core (``lifecycle.py``): it admits the pods the
watch sees, turns the gateway's task events into the core's events, and carries out the
effects the core returns — in order for each pod, side by side across pods, with the
API writes throttled by rank (a pod's end first). Everything it decides is the core's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import FleetPoolSpec
from parkfleet.contract import REASON_NAMESPACE_NOT_ALLOWED, REASON_UNSUPPORTED
from parkfleet.nodeagent import lifecycle as lc
from parkfleet.nodeagent import podevents as ev
from parkfleet.nodeagent import podstatus
from parkfleet.nodeagent.logs import LogStore, result_lines
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.nodeagent.namespaces import NamespaceLabels
from parkfleet.nodeagent.posting import EventPoster, write_unread
from parkfleet.nodeagent.redo import Redoer, Unchecked
from parkfleet.nodeagent.resultspool import ResultSpool
from parkfleet.nodeagent.taskio import ResultFile
from parkfleet.nodeagent.taskspecs import BadInput, Prepared, TaskSpecs, check_gpu_memory
from parkfleet.nodeagent.translate import PodTask, Unsupported, translate
from parkfleet.nodeagent.watchloop import EXPECTED_API_ERRORS
from parkfleet.taskport import TaskEvent, TaskPort

__all__ = ["PodDriver", "pod_key"]

log = logging.getLogger(__name__)

# API calls in flight at once. Pods proceed side by side (one write at a time, 500 pods
# took 10 s to start), and the writes are ranked: a pod's end is what the Job controller
# waits for before it creates the next unit's pod for the freed car, so it has the most
# slots (with 16, ends queued up to 4 s behind each other when 500 units ended within
# seconds); Running and Events only report what a car already does, and fewer of them in
# flight leave the API server to the pods being created and bound.
MAX_END_WRITES = 64
MAX_ADMISSIONS = 64  # pods admitted at once (reading their task's facts, submitting it)
MAX_STATUS_WRITES = 16
MAX_EVENT_POSTS = 2
# A pod whose admission failed through no fault of its own is tried again this much
# later, doubling up to the cap.
# Where a task's results wait until its unit's file is written (beside that file).
SPOOL_DIR = ".spool"
RETRY_FIRST_S = 1.0
REASON_CAR_QUARANTINED = "CarQuarantined"
RETRY_MAX_S = 60.0


def pod_key(pod: Mapping[str, Any]) -> str:
    """``namespace/name`` of a pod."""
    meta = pod["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class _Tracked:
    """A pod we run: the core's state, and what the shell holds for it."""

    state: lc.PodState
    prepared: Prepared | None = None
    sinks: dict[str, ResultSpool] = field(default_factory=dict)
    last_step: asyncio.Task[None] | None = None  # the pod's latest effects (see _execute)


class PodDriver:
    """Runs the pods of the cells this gateway shard owns.

    Args:
        api: Kubernetes API client.
        port: The gateway that places tasks on cars.
        pool_of: Maps a cell id to its pool's spec (None when no longer owned).
        specs: Builds pods' task specs.
        logs: Log buffers served by the kubelet API.
        poster: Posts Events.
        metrics: Where to count.
        host_ip: The gateway's address, shown as the pods' ``status.hostIP``.
        namespaces: The namespaces' labels, for the pools' ``spec.namespaceSelector``
            (its watch run by the caller); None reads a namespace for each pod that needs it.
    """

    def __init__(
        self,
        api: client.ApiClient,
        port: TaskPort,
        pool_of: Callable[[str], FleetPoolSpec | None],
        specs: TaskSpecs,
        logs: LogStore,
        poster: EventPoster,
        metrics: NodeAgentMetrics | None = None,
        host_ip: str = "",
        namespaces: NamespaceLabels | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.port = port
        self.pool_of = pool_of
        self.specs = specs
        self.logs = logs
        self.poster = poster
        self.metrics = metrics or NodeAgentMetrics()
        self.host_ip = host_ip
        self.namespaces = namespaces or NamespaceLabels(api)
        self.tracked: dict[str, _Tracked] = {}
        self.by_task: dict[str, str] = {}  # task id -> pod uid
        self.events = port.events()
        self._admitting: set[str] = set()
        self._admissions = asyncio.Semaphore(MAX_ADMISSIONS)
        # What the watch said of a pod while it was admitted: ("deletion" | "gone", pod).
        self._while_admitting: dict[str, tuple[str, Mapping[str, Any]]] = {}
        self._retries: dict[str, int] = {}
        self._writes = asyncio.Semaphore(MAX_STATUS_WRITES)
        self._end_writes = asyncio.Semaphore(MAX_END_WRITES)
        self._posts = asyncio.Semaphore(MAX_EVENT_POSTS)
        self._background: set[asyncio.Task[None]] = set()
        self.redo = Redoer(port, poster, specs.data_root / SPOOL_DIR, self.metrics)

    def cell_of(self, key: str) -> str | None:
        """The cell of a pod we run (``namespace/name``), None when unknown."""
        for t in self.tracked.values():
            if t.state.pod.key == key:
                return t.state.pod.cell
        return None

    # ---- pods -> the core --------------------------------------------------------------

    async def sync(self, pod: Mapping[str, Any], cell: str) -> None:
        """Brings a pod bound to ``cell`` in line: admit it, delete it, or nothing."""
        meta = pod["metadata"]
        uid = str(meta["uid"])
        phase = (pod.get("status") or {}).get("phase", "Pending")
        terminal = phase in ("Succeeded", "Failed")
        if meta.get("deletionTimestamp"):
            self._deletion_requested(pod, cell, terminal)
            return
        if terminal or uid in self.tracked or uid in self._admitting:
            return
        pool = self.pool_of(cell)
        if pool is None:
            return
        # Pods are admitted side by side (each waits on the gateway, its input, its
        # result file): one after the other, a burst of 500 pods on a cell took ~20 s to
        # reach its cars. What the watch says of a pod while it is admitted is kept and
        # applied once it is (see _deletion_requested, _gone).
        self._admitting.add(uid)
        self._spawn(self._admit_side_by_side(pod, cell, pool, phase))

    async def _admit_side_by_side(
        self, pod: Mapping[str, Any], cell: str, pool: FleetPoolSpec, phase: str
    ) -> None:
        uid = str(pod["metadata"]["uid"])
        try:
            async with self._admissions:
                await self._admit(pod, cell, pool, phase)
        finally:
            self._admitting.discard(uid)
            late = self._while_admitting.pop(uid, None)
            if late is not None:
                kind, obj = late
                if kind == "gone":
                    self._gone(uid, pod_key(obj))
                else:
                    phase = (obj.get("status") or {}).get("phase", "Pending")
                    self._deletion_requested(obj, cell, phase in ("Succeeded", "Failed"))

    def _deletion_requested(self, pod: Mapping[str, Any], cell: str, terminal: bool) -> None:
        meta = pod["metadata"]
        if str(meta["uid"]) in self._admitting:
            self._while_admitting[str(meta["uid"])] = ("deletion", pod)
            return
        if terminal and meta.get("deletionGracePeriodSeconds") == 0:
            return  # our part is done; a finalizer (the Job controller's) holds the object
        tracked = self.tracked.get(str(meta["uid"]))
        if tracked is not None:
            self._step(tracked, ev.DeletionRequested())
            return
        pool = self.pool_of(cell)
        facts = _pod_facts(pod, cell, pool.name if pool else "", self.host_ip)
        if terminal:
            self._start((lc.PodState(pod=facts, copies=(), phase="Ended"), [ev.DeletePod()]))
        else:
            started = str((pod.get("status") or {}).get("startTime") or "")
            self._start(lc.deleted(facts, started, _now()))

    async def _admit(
        self, pod: Mapping[str, Any], cell: str, pool: FleetPoolSpec, phase: str
    ) -> None:
        facts = _pod_facts(pod, cell, pool.name, self.host_ip)
        # First: a pod its pool does not allow gets no further, however it was bound here.
        try:
            refusal = await self.namespaces.refusal(pool, facts.namespace)
        except Exception as exc:
            bug = not isinstance(exc, EXPECTED_API_ERRORS)
            log.warning("pod %s: namespace not read; trying again", pod_key(pod), exc_info=bug)
            self._retry_later(pod, cell)
            return
        if refusal is not None:
            self._start(lc.refuse(facts, REASON_NAMESPACE_NOT_ALLOWED, refusal, _now()))
            return
        try:
            task = translate(pod, pool.runtimes)
            check_gpu_memory(task, cell, self.port)
        except Unsupported as exc:
            self._start(lc.refuse(facts, REASON_UNSUPPORTED, str(exc), _now()))
            return
        facts = dataclasses.replace(
            facts,
            container=task.container,
            copies=task.copies,
            compare=task.compare,
            spot_check=task.spot_check if task.spot_check is not None else pool.spot_check_fraction,
        )
        try:
            prepared = await self.specs.prepare(pod, cell, task, pool)
        except BadInput as exc:
            self._start(lc.refuse(facts, exc.reason, exc.message, _now()))
            return
        except Exception:
            # Not the pod's fault (the API, a bug of ours): say so, and try again later.
            log.exception("pod %s: cannot build its task; trying again", pod_key(pod))
            self._retry_later(pod, cell)
            return
        self._retries.pop(facts.uid, None)
        spec = prepared.spec
        facts = dataclasses.replace(facts, items=(spec.item_start, spec.item_end))
        if await self._already_done(facts, task, prepared):
            return
        running = (
            str((pod.get("status") or {}).get("startTime") or podstatus.timestamp(_now()))
            if phase == "Running"
            else ""
        )
        self._start(lc.admit(facts, running_since=running), prepared)

    async def _already_done(self, facts: lc.Pod, task: PodTask, prepared: Prepared) -> bool:
        if prepared.result is None or task.unit is None:
            return False
        items = await prepared.result.finished_items()
        if items is None:
            return False
        # The unit's file exists and names this job: it is done. Running it again
        # changes nothing. (A file naming no job or another runs the unit, replaced.)
        self._start(lc.already_done(facts, items, prepared.result.name, _now()))
        return True

    def _retry_later(self, pod: Mapping[str, Any], cell: str) -> None:
        uid = str(pod["metadata"]["uid"])
        tries = self._retries.get(uid, 0)
        self._retries[uid] = tries + 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2**tries)

        async def again() -> None:
            await asyncio.sleep(delay)
            if uid in self._retries:  # not forgotten meanwhile
                await self.sync(pod, cell)

        self._spawn(again())

    def _start(self, begun: lc.Step, prepared: Prepared | None = None) -> None:
        state, effects = begun
        tracked = _Tracked(state=state, prepared=prepared)
        self.tracked[state.pod.uid] = tracked
        for copy in state.copies:
            self.by_task[copy.task_id] = state.pod.uid
        self._execute(tracked, effects)

    def forget(self, pod: Mapping[str, Any]) -> None:
        """The pod object is gone: its tasks are cancelled if they still run."""
        uid = str(pod["metadata"]["uid"])
        if uid in self._admitting:
            self._while_admitting[uid] = ("gone", pod)
            return
        self._gone(uid, pod_key(pod))

    def forget_missing(self, cell: str, present: Iterable[str]) -> None:
        """Forgets the pods of ``cell`` whose uid is not in ``present`` (after a relist)."""
        keep = set(present)
        for uid, t in list(self.tracked.items()):
            if t.state.pod.cell == cell and uid not in keep:
                self._gone(uid, t.state.pod.key)

    def _gone(self, uid: str, key: str) -> None:
        self._retries.pop(uid, None)
        tracked = self.tracked.pop(uid, None)
        if tracked is not None:
            self._step(tracked, ev.Gone())
        self.logs.drop(key)

    # ---- task events -> the core -------------------------------------------------------

    async def run(self) -> None:
        """Follows the gateway's task events until cancelled."""
        async for event in self.events:
            if await self.redo.on_event(event):
                continue
            uid = self.by_task.get(event.task_id)
            tracked = self.tracked.get(uid) if uid is not None else None
            if tracked is None:
                continue
            translated = await self._translate(tracked, event)
            if translated is not None:
                self._step(tracked, translated)

    async def _translate(self, t: _Tracked, e: TaskEvent) -> ev.Event | None:
        if e.kind == "accepted":
            # Asked only for spot-checked units: a trusted first car skips the check.
            trusted = t.state.pod.checked and self.port.trusted(e.car_id)
            return ev.Accepted(e.task_id, e.car_id, trusted)
        if e.kind == "moved":
            return ev.Moved(e.task_id, e.from_car, e.car_id, e.checkpoint)
        if e.kind == "lost":
            return ev.Lost(e.task_id, e.from_car or e.car_id, e.reason, e.checkpoint)
        if e.kind == "log":
            return ev.Logged(e.task_id, e.lines)
        if e.kind == "succeeded":
            outputs = None
            if t.state.pod.copies > 1:
                sink = t.sinks.get(e.task_id)
                outputs = await sink.arrays() if sink is not None else {}
            return ev.Succeeded(e.task_id, e.items_done, e.energy_wh, e.energy_modelled, outputs)
        if e.kind == "failed":
            return ev.Failed(e.task_id, e.reason, e.message, e.energy_wh, e.energy_modelled)
        if e.kind == "cancelled":
            return ev.Stopped(e.task_id, e.energy_wh, e.energy_modelled)
        return None  # placed, refused, progress, checkpoint: nothing a pod shows

    def _step(self, t: _Tracked, event: ev.Event) -> None:
        t.state, effects = lc.step(t.state, event, _now())
        for copy in t.state.copies:
            self.by_task.setdefault(copy.task_id, t.state.pod.uid)
        self._execute(t, effects)

    # ---- effects -------------------------------------------------------------------------

    def _execute(self, t: _Tracked, effects: Sequence[ev.Effect]) -> None:
        """Carries out ``effects`` after the pod's earlier ones, without waiting for them.

        A pod's effects (its status writes above all) stay in order; different pods'
        run side by side, so one slow round trip holds up no other pod.
        """
        if not effects:
            return
        before = t.last_step

        async def run() -> None:
            if before is not None:
                await asyncio.wait([before])
            for effect in effects:
                try:
                    await self._do(t, effect)
                except ApiException as exc:
                    log.warning(
                        "pod %s: %s failed: %s %s",
                        t.state.pod.key,
                        type(effect).__name__,
                        exc.status,
                        exc.reason,
                    )
                except Exception:
                    log.exception("pod %s: %s failed", t.state.pod.key, type(effect).__name__)

        t.last_step = self._spawn(run())

    async def _do(self, t: _Tracked, effect: ev.Effect) -> None:
        pod = t.state.pod
        if isinstance(effect, ev.Submit):
            await self._submit(t, effect)
        elif isinstance(effect, ev.Cancel):
            await self.port.cancel(effect.task_id, effect.reason)
        elif isinstance(effect, ev.Release):
            self.port.release(effect.task_id)
            self.by_task.pop(effect.task_id, None)
            released = t.sinks.get(effect.task_id)
            if released is not None:
                await released.discard()
        elif isinstance(effect, ev.Verdict):
            for car in self.port.record_verdict(effect.task_id, effect.agreed):
                # The gateway's fact, told on the pod whose vote caused it.
                msg = f"car {car} quarantined: it gets no more work (its results disagreed)"
                self.logs.write(pod.key, f"parkfleet: {msg}")
                self._post(pod, ev.PostEvent(REASON_CAR_QUARANTINED, msg, warning=True))
                self.redo.quarantined(car)
        elif isinstance(effect, ev.KeptUnchecked):
            # Remembered: should one of its cars be quarantined, the unit runs again.
            if t.prepared is not None and t.prepared.result is not None and effect.cars:
                self.redo.kept(Unchecked(pod, t.prepared.spec, t.prepared.result, effect.cars))
        elif isinstance(effect, ev.PatchStatus):
            async with self._end_writes if effect.final else self._writes:
                await write_unread(
                    self.core.patch_namespaced_pod_status(
                        pod.name,
                        pod.namespace,
                        {"status": effect.status},
                        _preload_content=False,
                    )
                )
        elif isinstance(effect, ev.PostEvent):
            self._post(pod, effect)
        elif isinstance(effect, ev.Log):
            self.logs.write(pod.key, *effect.lines)
        elif isinstance(effect, ev.CloseLog):
            self.logs.close(pod.key)
        elif isinstance(effect, ev.PromoteResult):
            sink = t.sinks[effect.task_id]
            if t.prepared is not None and t.prepared.result is not None:
                await sink.save(t.prepared.result)
        elif isinstance(effect, ev.CountEnded):
            self.metrics.pod_ended(
                pod.pool, pod.namespace, effect.phase, effect.reason, effect.energy_wh
            )
        elif isinstance(effect, ev.ObserveStart):
            self.metrics.pod_start.labels(pod.pool).observe(effect.seconds)
        elif isinstance(effect, ev.SchedulePendingCheck):
            asyncio.get_running_loop().call_later(
                effect.after_s, lambda: self._step(t, ev.PendingDue())
            )
        elif isinstance(effect, ev.DeletePod):
            await self._delete(pod.namespace, pod.name, pod.uid)

    async def _submit(self, t: _Tracked, effect: ev.Submit) -> None:
        prepared = t.prepared
        if prepared is None:
            raise RuntimeError(f"pod {t.state.pod.key}: a task to submit but no spec")
        sink = t.sinks.get(effect.task_id)
        if sink is None:
            single = t.state.pod.copies == 1
            result = prepared.result
            # One copy writes its file itself; copies that will be compared are spooled
            # until the vote promotes one. A pod with no result file and one copy keeps
            # nothing (its results are only logged).
            spool = None
            if result is not None or not single:
                root = (
                    result.path.parent if isinstance(result, ResultFile) else self.specs.data_root
                )
                spool = root / SPOOL_DIR / effect.task_id
            first = not t.sinks
            sink = ResultSpool(
                result if single else None,
                spool,
                on_chunk=self._log_chunks(t.state.pod.key) if first else None,
            )
            t.sinks[effect.task_id] = sink
        spec = dataclasses.replace(
            prepared.spec, task_id=effect.task_id, sink=sink, group=effect.group
        )
        if effect.items is not None:  # a spot check's slice
            spec = dataclasses.replace(spec, item_start=effect.items[0], item_end=effect.items[1])
        try:
            await self.port.submit(spec)
        except ValueError as exc:
            self._step(t, ev.SubmitFailed(effect.task_id, str(exc)))

    async def _delete(self, namespace: str, name: str, uid: str) -> None:
        # As the kubelet does once the containers stopped: remove the object at once,
        # and only the object we know (a pod of the same name may have replaced it).
        try:
            await self.core.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # already gone, or another pod by now
                raise

    def _post(self, pod: lc.Pod, effect: ev.PostEvent) -> None:
        """Posts an Event about the pod in the background (it holds up no status write)."""
        ref = pod.ref

        async def post() -> None:
            async with self._posts:
                await self.poster.post(ref, effect.reason, effect.message, warning=effect.warning)

        self._spawn(post())

    def _log_chunks(self, key: str) -> Callable[[int, Mapping[str, npt.NDArray[np.generic]]], None]:
        def to_log(first: int, outputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
            self.logs.write(key, *result_lines(first, outputs))

        return to_log

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # The loop keeps only weak references to tasks: these stay until they end.
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _pod_facts(pod: Mapping[str, Any], cell: str, pool: str, host_ip: str) -> lc.Pod:
    meta = pod["metadata"]
    c = (pod.get("spec", {}).get("containers") or [{}])[0]
    return lc.Pod(
        uid=str(meta["uid"]),
        namespace=str(meta["namespace"]),
        name=str(meta["name"]),
        cell=cell,
        pool=pool,
        container=str(c.get("name", "main")),
        image=str(c.get("image", "")),
        created=str(meta.get("creationTimestamp") or ""),
        host_ip=host_ip,
    )
