"""Pods bound to a cell's Node become tasks on the gateway; task events become pod status.

The pod's state is told truthfully: ``Pending`` with a ``parkfleet.io/CarAssigned``
condition while it waits for a car, ``Running`` with container status and
``startedAt`` once a car runs it, ``Succeeded``/``Failed`` with exit code, reason and
message at the end. A car leaving mid-task moves the task to another car of the cell
(the gateway resumes it from its checkpoint) and the pod gets a ``Moved`` Event while
it stays ``Running``. Deleting the pod cancels the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import FleetPoolSpec
from parkfleet.gateway import Gateway
from parkfleet.gateway.models import ModelNotFound
from parkfleet.gateway.spec import ModelRef, TaskEvent, TaskSpec
from parkfleet.nodeagent.compare import agree, majority
from parkfleet.nodeagent.logs import LogStore
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.nodeagent.posting import EventPoster, unparsed
from parkfleet.nodeagent.taskio import ConfigMapInput, DirectorySink, VolumeInput, resolve_under
from parkfleet.nodeagent.translate import PodTask, Unsupported, translate

__all__ = ["CAR_ASSIGNED", "REASON_UNSUPPORTED", "PodDriver"]

log = logging.getLogger(__name__)

CAR_ASSIGNED = "parkfleet.io/CarAssigned"
REASON_UNSUPPORTED = "UnsupportedPodSpec"
REASON_INVALID_INPUT = "InvalidTaskInput"
REASON_DELETED = "PodDeleted"
MAX_RESULT_LOG_ITEMS = 64  # per chunk: a log is for people, the result file is for data
# API calls in flight at once. Pods proceed side by side (one write at a time, 500 pods
# took 10 s to start), and the writes are ranked: a pod's end is what the Job controller
# waits for before it creates the next unit's pod for the freed car, so it has the most
# slots (with 16, ends queued up to 4 s behind each other when 500 units ended within
# seconds); Running and Events only report what a car already does, and fewer of them in
# flight leave the API server to the pods being created and bound.
MAX_END_WRITES = 64
MAX_STATUS_WRITES = 4
MAX_EVENT_POSTS = 2
PENDING_AFTER_S = 1.0  # a pod no car took within this shows WaitingForCar


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: Mapping[str, Any]) -> str:
    """``namespace/name`` of a pod."""
    meta = pod["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


@dataclass
class _Copy:
    """One run of a pod's items on one car (several when redundancy ≥ 2)."""

    task_id: str
    sink: DirectorySink
    car: str = ""
    done: bool = False
    energy_wh: float = 0.0
    modelled: bool = False


@dataclass
class _Tracked:
    uid: str
    namespace: str
    name: str
    cell: str
    container: str
    image: str
    task: PodTask
    copies: list[_Copy]
    spec: TaskSpec
    result: Path | None = None
    pool: str = ""
    created: str = ""
    started_at: str = ""
    running: bool = False
    ended: bool = False
    accepted: bool = False  # a car took it (set on arrival, before its step runs)
    last_step: asyncio.Task[None] | None = None  # the pod's latest step (see _in_order)
    cars: list[str] = field(default_factory=list)
    moves: int = 0
    disagreements: int = 0

    def summary(self, items: int, **extra: Any) -> str:
        """The machine-readable termination message the operator aggregates."""
        energy = sum(c.energy_wh for c in self.copies)
        return json.dumps(
            {
                "items": items,
                "cars": sorted(set(self.cars)),
                "moves": self.moves,
                "energyWh": round(energy, 6),
                "energyModelled": any(c.modelled for c in self.copies),
                "disagreements": self.disagreements,
                **extra,
            },
            separators=(",", ":"),
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> dict[str, str]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }


class PodDriver:
    """Runs the pods of the cells this gateway shard owns.

    Args:
        api: Kubernetes API client.
        gateway: The in-process gateway that places tasks on cars.
        pool_of: Maps a cell id to its pool's spec (None when no longer owned).
        data_root: Where inputs are read and results written.
        logs: Log buffers served by the kubelet API.
        poster: Posts Events.
    """

    def __init__(
        self,
        api: client.ApiClient,
        gateway: Gateway,
        pool_of: Callable[[str], FleetPoolSpec | None],
        data_root: Path,
        logs: LogStore,
        poster: EventPoster,
        metrics: NodeAgentMetrics | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.gateway = gateway
        self.pool_of = pool_of
        self.data_root = data_root
        self.logs = logs
        self.poster = poster
        self.metrics = metrics or NodeAgentMetrics()
        self.tracked: dict[str, _Tracked] = {}
        self.by_task: dict[str, tuple[_Tracked, _Copy]] = {}
        self.events = gateway.events()
        self._writes = asyncio.Semaphore(MAX_STATUS_WRITES)
        self._end_writes = asyncio.Semaphore(MAX_END_WRITES)
        self._posts = asyncio.Semaphore(MAX_EVENT_POSTS)
        self._background: set[asyncio.Task[None]] = set()

    # ---- pods -> tasks -------------------------------------------------------------

    async def sync(self, pod: Mapping[str, Any], cell: str) -> None:
        """Brings a pod bound to ``cell`` in line: submit, cancel or nothing."""
        meta = pod["metadata"]
        uid = str(meta["uid"])
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if meta.get("deletionTimestamp"):
            await self._finish_deletion(pod)
            return
        if phase in ("Succeeded", "Failed") or uid in self.tracked:
            return
        pool = self.pool_of(cell)
        if pool is None:
            return
        try:
            task = translate(pod, pool.runtimes)
            self._check_capacity(task, cell)
        except Unsupported as exc:
            await self._fail_early(pod, REASON_UNSUPPORTED, str(exc))
            return
        container = task.container
        image = str(pod["spec"]["containers"][0].get("image", ""))
        try:
            spec, result = await self._task_spec(pod, cell, task, pool)
        except (Unsupported, ModelNotFound, ValueError, OSError) as exc:
            await self._fail_early(pod, REASON_INVALID_INPUT, str(exc))
            return
        except ApiException as exc:  # e.g. the input ConfigMap does not exist
            await self._fail_early(pod, REASON_INVALID_INPUT, f"input: {exc.status} {exc.reason}")
            return
        except Exception as exc:  # the model loader's own errors (not a ValueError)
            await self._fail_early(pod, "ModelLoadFailed", f"{type(exc).__name__}: {exc}")
            return
        key = pod_key(pod)
        copies = []
        for i in range(task.copies):
            # One copy writes its file itself; copies that will be compared stay in memory.
            logger = self._log_chunks(key) if i == 0 else None
            path = result if task.copies == 1 else None
            task_id = uid if task.copies == 1 else f"{uid}-r{i}"
            copies.append(_Copy(task_id, DirectorySink(path, on_chunk=logger)))
        tracked = _Tracked(
            uid=uid,
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            cell=cell,
            container=container,
            image=image,
            task=task,
            copies=copies,
            spec=spec,
            result=result,
            pool=pool.name,
            created=str(meta.get("creationTimestamp") or ""),
        )
        self.tracked[uid] = tracked
        if result is not None and task.unit is not None and result.exists():
            # The unit's result file exists: it is done. Running it again changes nothing.
            tracked.ended = True
            done = np.load(result)
            items = len(next(v for k, v in done.items() if k != "first_item"))
            msg = tracked.summary(items, cached=True)
            self.logs.write(key, f"parkfleet: unit {task.unit} already done ({result.name})")
            self.logs.close(key)
            status = self._terminated_status(tracked, 0, "Completed", msg)
            self._in_order(tracked, lambda: self._patch_status(tracked, status))
            return
        if phase == "Running":
            # We restarted (or the gateway did) while the pod ran: its task starts again
            # on a car; the pod stays Running, as it is.
            tracked.running = True
            tracked.started_at = str((pod.get("status") or {}).get("startTime") or _now())
            self.logs.write(key, "parkfleet: gateway restarted; running the task again")
            await self._submit_copies(tracked)
            return
        self.logs.write(
            key,
            f"parkfleet: task {uid} for items {spec.item_start}..{spec.item_end - 1} "
            f"queued on cell {cell}" + (f" ({task.copies} copies)" if task.copies > 1 else ""),
        )
        await self._submit_copies(tracked)
        # Written only if no car took the pod meanwhile: most pods go straight to
        # Running, one status write (and its fan-out to every watcher) fewer each.
        asyncio.get_running_loop().call_later(
            PENDING_AFTER_S, lambda: self._in_order(tracked, lambda: self._write_pending(tracked))
        )

    async def _write_pending(self, t: _Tracked) -> None:
        if t.accepted or t.ended or t.uid not in self.tracked:
            return  # a car took it already: Running follows, Pending would only flicker
        await self._patch_status(
            t,
            {
                "phase": "Pending",
                "conditions": [
                    self._condition(CAR_ASSIGNED, "False", "WaitingForCar", "waiting for a car"),
                ],
            },
        )

    def _in_order(self, t: _Tracked, step: Callable[[], Awaitable[None]]) -> None:
        """Runs ``step`` after the pod's earlier steps, without waiting for it.

        A pod's steps (its status writes above all) stay in order; different pods'
        steps run side by side, so one slow round trip holds up no other pod.
        """
        before = t.last_step

        async def run() -> None:
            if before is not None:
                await asyncio.wait([before])
            try:
                await step()
            except ApiException as exc:
                log.warning("pod %s: status update failed: %s", t.key, exc.reason)
            except Exception:
                log.exception("pod %s: a step failed", t.key)

        t.last_step = self._spawn(run())

    def _post(self, t: _Tracked, reason: str, message: str, *, warning: bool = False) -> None:
        """Posts an Event about the pod in the background (it holds up no status write)."""

        async def post() -> None:
            async with self._posts:
                await self.poster.post(t.ref, reason, message, warning=warning)

        self._spawn(post())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # The loop keeps only weak references to tasks: these stay until they end.
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _submit_copies(self, t: _Tracked) -> None:
        for copy in t.copies:
            if not copy.done:
                self.by_task[copy.task_id] = (t, copy)
                await self.gateway.submit(
                    dataclasses.replace(
                        t.spec,
                        task_id=copy.task_id,
                        sink=copy.sink,
                        group=t.uid if len(t.copies) > 1 else "",
                    )
                )

    def _log_chunks(self, key: str) -> Callable[[int, Mapping[str, npt.NDArray[np.generic]]], None]:
        def to_log(first: int, outputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
            self.logs.write(key, *_result_lines(first, outputs))

        return to_log

    def _check_capacity(self, task: PodTask, cell: str) -> None:
        if not task.gpu_memory_mib:
            return  # capacity() walks every car of every cell: not per pod for nothing
        cap = self.gateway.capacity().get(cell)
        if cap is not None and cap.cars_connected:
            biggest = self.gateway.max_gpu_memory_mib(cell)
            if task.gpu_memory_mib > biggest:
                raise Unsupported(
                    "spec.containers[0].env[PARKFLEET_GPU_MEMORY_MIB]",
                    f"{task.gpu_memory_mib} MiB is more GPU memory than any car of cell "
                    f"{cell} has ({biggest} MiB)",
                )

    async def _task_spec(
        self, pod: Mapping[str, Any], cell: str, task: PodTask, pool: FleetPoolSpec
    ) -> tuple[TaskSpec, Path | None]:
        model = self._model(task)
        # Loading a model to read its names is slow work: off the event loop, once. (Not
        # a thread hop per pod: on a busy loop each one costs a pod ~10 ms, serially.)
        info = self.gateway.models.described(model.sha256)
        if info is None:
            info = await asyncio.to_thread(self.gateway.models.describe, model.sha256)
        source: VolumeInput | ConfigMapInput
        if task.input_configmap is not None:
            name, key = task.input_configmap
            cm = await self.core.read_namespaced_config_map(name, pod["metadata"]["namespace"])
            if key not in (cm.data or {}):
                raise ValueError(f"ConfigMap {name} has no key {key!r}")
            source = ConfigMapInput(cm.data[key])
            where = f"ConfigMap {name}/{key}"
        else:
            source = VolumeInput(resolve_under(self.data_root, task.input_path))
            where = task.input_path
        end = task.item_end if task.item_end is not None else source.items
        if end > source.items:
            raise Unsupported(
                "spec.containers[0].env[PARKFLEET_ITEMS]",
                f"asks for items up to {end - 1} but {where} holds {source.items}",
            )
        result: Path | None = None
        if task.output_dir:
            out_dir = resolve_under(self.data_root, task.output_dir)
            result = out_dir / (task.result_name or f"{pod['metadata']['name']}.npz")
        spec = TaskSpec(
            task_id=str(pod["metadata"]["uid"]),
            cell=cell,
            runtime=task.runtime,
            model=model,
            input_name=task.input_name or info.get("input", "input"),
            output_names=task.output_names or tuple(info.get("outputs", ())),
            batch_size=task.batch_size,
            item_start=task.item_start,
            item_end=end,
            inputs=source,
            sink=DirectorySink(None),
            gpu_memory_mib=task.gpu_memory_mib,
            grace_s=pool.grace_s,
        )
        return spec, result

    def _model(self, task: PodTask) -> ModelRef:
        if task.model_sha256:
            self.gateway.models.path(task.model_sha256)  # raises ModelNotFound
            return ModelRef(sha256=task.model_sha256, uri=task.model_uri)
        return self.gateway.models.lookup(task.model_name)

    async def forget(self, pod: Mapping[str, Any]) -> None:
        """The pod object is gone: cancel its task if it still runs."""
        uid = str(pod["metadata"]["uid"])
        tracked = self.tracked.pop(uid, None)
        if tracked is not None:
            if not tracked.ended:
                await self._cancel_copies(tracked, REASON_DELETED)
            for copy in tracked.copies:
                self.by_task.pop(copy.task_id, None)
                # Events of copies cancelled at the pod's end are skipped: forget them here.
                self.gateway.forget(copy.task_id)
            self.gateway.release_group(uid)
        self.logs.drop(pod_key(pod))

    async def _cancel_copies(self, t: _Tracked, reason: str) -> None:
        for copy in t.copies:
            if not copy.done:
                await self.gateway.cancel(copy.task_id, reason)

    # ---- deletion (what a kubelet does when a pod's deletion is requested) ----------

    async def _finish_deletion(self, pod: Mapping[str, Any]) -> None:
        """Deletion requested: cancel the task, end the pod, then remove its object.

        The phase comes first: the Job controller waits for a terminal phase before it
        replaces a pod and lifts its finalizer (a pod deleted while ``Running`` stays
        ``Terminating``); the object goes last, with grace 0 and its uid as precondition.
        """
        meta = pod["metadata"]
        phase = (pod.get("status") or {}).get("phase", "Pending")
        terminal = phase in ("Succeeded", "Failed")
        if terminal and meta.get("deletionGracePeriodSeconds") == 0:
            return  # our part is done; a finalizer (the Job controller's) holds the object
        tracked = self.tracked.get(str(meta["uid"]))
        if tracked is None:
            if not terminal:
                await self._end_untracked(pod)
            await self._delete_now(meta)
            return
        if not tracked.ended:
            tracked.ended = True
            await self._cancel_copies(tracked, REASON_DELETED)
            message = "the pod was deleted; its task was cancelled"
            self.logs.write(tracked.key, f"parkfleet: {message}")
            self.logs.close(tracked.key)
            status = self._terminated_status(
                tracked, exit_code(REASON_DELETED), REASON_DELETED, message
            )
            self._in_order(tracked, lambda: self._patch_status(tracked, status))
            energy = sum(c.energy_wh for c in tracked.copies)
            self.metrics.pod_ended(
                tracked.pool, tracked.namespace, "Failed", REASON_DELETED, energy
            )
        self._in_order(tracked, functools.partial(self._delete_now, meta))

    async def _end_untracked(self, pod: Mapping[str, Any]) -> None:
        # A pod we run no task for (e.g. from before a gateway restart) ends all the same.
        meta = pod["metadata"]
        c = (pod["spec"].get("containers") or [{}])[0]
        started = str((pod.get("status") or {}).get("startTime") or "")
        status = terminated_status(
            str(c.get("name", "main")),
            str(c.get("image", "")),
            exit_code(REASON_DELETED),
            REASON_DELETED,
            "the pod was deleted",
            started,
        )
        try:
            await self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )
        except ApiException as exc:
            log.warning("pod %s: terminal status not written: %s", pod_key(pod), exc.reason)

    async def _delete_now(self, meta: Mapping[str, Any]) -> None:
        try:
            await self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=str(meta["uid"])),
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already; a new pod of the same name
                log.warning("pod %s/%s not removed: %s", meta["namespace"], meta["name"], exc)

    async def _fail_early(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        c = (pod["spec"].get("containers") or [{}])[0]
        status = terminated_status(
            str(c.get("name", "main")), str(c.get("image", "")), exit_code(reason), reason, message
        )
        status["conditions"] = [self._condition(CAR_ASSIGNED, "False", reason, message)]
        with contextlib.suppress(ApiException):
            await self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )
        ref = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        await self.poster.post(ref, reason, message, warning=True)
        pool = self.pool_of(str((pod.get("spec") or {}).get("nodeName", ""))[3:])
        self.metrics.pods_ended.labels(pool.name if pool else "", "Failed", reason).inc()
        self.logs.write(pod_key(pod), f"parkfleet: {reason}: {message}")
        self.logs.close(pod_key(pod))

    # ---- task events -> pod status ---------------------------------------------------

    async def run(self) -> None:
        """Follows the gateway's task events until cancelled.

        Each pod's events are handled in order, but pods side by side: a pod's status
        write or result file never holds up another pod's.
        """
        async for event in self.events:
            found = self.by_task.get(event.task_id)
            if found is None or event.kind in ("placed", "checkpoint", "progress"):
                continue  # nothing a pod shows
            tracked, copy = found
            if event.kind == "accepted":
                tracked.accepted = True
            self._in_order(tracked, functools.partial(self._on_event, tracked, copy, event))

    async def _on_event(self, t: _Tracked, copy: _Copy, e: TaskEvent) -> None:
        if t.ended:
            return
        tag = f"[copy {t.copies.index(copy)}] " if len(t.copies) > 1 else ""
        if e.kind == "accepted":
            copy.car = e.car_id
            if e.car_id and e.car_id not in t.cars:
                t.cars.append(e.car_id)
            if not t.running:
                t.running = True
                t.started_at = _now()
                self.logs.write(t.key, f"parkfleet: {tag}running on car {e.car_id}")
                self._post(t, "Started", f"running on car {e.car_id}")
                await self._patch_status(t, self._running_status(t, e.car_id))
                self._observe_start(t)
        elif e.kind == "moved":
            t.moves += 1
            msg = f"moved from car {e.from_car} to car {e.car_id}, resuming at item {e.checkpoint}"
            self.logs.write(t.key, f"parkfleet: {tag}{msg}")
            self._post(t, "Moved", msg)
        elif e.kind == "lost":
            msg = (
                f"car {e.from_car or e.car_id} left ({e.reason}); the task waits for "
                f"another car of cell {t.cell} from item {e.checkpoint}"
            )
            self.logs.write(t.key, f"parkfleet: {tag}{msg}")
            self._post(t, "CarLost", msg, warning=True)
        elif e.kind == "log":
            self.logs.write(t.key, *(f"{tag}{line}" for line in e.lines))
        elif e.kind == "succeeded":
            copy.done = True
            copy.energy_wh, copy.modelled = e.energy_wh, e.energy_modelled
            self.gateway.forget(copy.task_id)
            if all(c.done for c in t.copies):
                await self._all_copies_done(t)
        elif e.kind in ("failed", "cancelled"):
            copy.done = True
            copy.energy_wh, copy.modelled = e.energy_wh, e.energy_modelled
            self.gateway.forget(copy.task_id)
            if e.kind == "failed":
                reason = e.reason or "TaskFailed"
                await self._cancel_copies(t, f"copy failed: {reason}")
                await self._fail(t, reason, e.message)

    async def _all_copies_done(self, t: _Tracked) -> None:
        if len(t.copies) == 1:
            copy = t.copies[0]
            await copy.sink.completed.wait()
            await self._succeed(t, copy.sink.items)
            return
        mode, output, tolerance = t.task.compare
        results = [c.sink.arrays() for c in t.copies]
        name = output or next(iter(results[0]), "")
        winner = majority([r[name] for r in results if name in r], mode, tolerance)
        if winner is None and len(t.copies) < t.task.copies + 2:
            # No majority: one more car decides.
            cars = ", ".join(c.car for c in t.copies)
            msg = f"results of cars {cars} disagree on {name!r} ({mode}); another car decides"
            t.disagreements += 1
            self.logs.write(t.key, f"parkfleet: {msg}")
            self._post(t, "ResultsDisagree", msg, warning=True)
            extra = _Copy(f"{t.uid}-r{len(t.copies)}", DirectorySink(None))
            t.copies.append(extra)
            await self._submit_copies(t)
            return
        if winner is None:
            await self._fail(t, "ResultsDisagree", f"no majority among {len(t.copies)} copies")
            return
        chosen = t.copies[winner]
        odd = [
            c.car
            for c, r in zip(t.copies, results, strict=True)
            if not agree(r[name], results[winner][name], mode, tolerance)
        ]
        if odd:
            msg = (
                f"kept the result of car {chosen.car}; car(s) {', '.join(odd)} returned "
                f"results that disagree on {name!r}"
            )
            self.logs.write(t.key, f"parkfleet: {msg}")
            self._post(t, "DisagreementResolved", msg, warning=True)
        if t.result is not None:
            await chosen.sink.save(t.result)
        await self._succeed(t, chosen.sink.items)

    async def _succeed(self, t: _Tracked, items: int) -> None:
        t.ended = True
        self.gateway.release_group(t.uid)
        energy = sum(c.energy_wh for c in t.copies)
        human = f"{items} items on {len(t.cars) or 1} car(s), {energy:.3g} Wh"
        if any(c.modelled for c in t.copies):
            human += " (modelled)"
        self.logs.write(t.key, f"parkfleet: done: {human}")
        self.logs.close(t.key)
        msg = t.summary(items)
        await self._patch_status(t, self._terminated_status(t, 0, "Completed", msg))
        self.metrics.pod_ended(t.pool, t.namespace, "Succeeded", "Completed", energy)
        self._post(t, "Completed", human)

    async def _fail(self, t: _Tracked, reason: str, message: str) -> None:
        t.ended = True
        self.gateway.release_group(t.uid)
        self.logs.write(t.key, f"parkfleet: {reason}: {message}")
        self.logs.close(t.key)
        code = exit_code(reason)
        await self._patch_status(t, self._terminated_status(t, code, reason, message))
        energy = sum(c.energy_wh for c in t.copies)
        self.metrics.pod_ended(t.pool, t.namespace, "Failed", reason, energy)
        self._post(t, reason, message, warning=True)

    def _observe_start(self, t: _Tracked) -> None:
        if not t.created:
            return
        created = datetime.datetime.fromisoformat(t.created.replace("Z", "+00:00"))
        elapsed = (datetime.datetime.now(datetime.UTC) - created).total_seconds()
        self.metrics.pod_start.labels(t.pool).observe(max(elapsed, 0.0))

    def _condition(self, kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
        }

    def _running_status(self, t: _Tracked, car: str) -> dict[str, Any]:
        return {
            "phase": "Running",
            "startTime": t.started_at,
            "hostIP": self.gateway.config.listen.rsplit(":", 1)[0],
            "conditions": [
                self._condition(CAR_ASSIGNED, "True", "CarAssigned", f"car {car}"),
                self._condition("Initialized", "True", "", ""),
                self._condition("ContainersReady", "True", "", ""),
                self._condition("Ready", "True", "", ""),
            ],
            "containerStatuses": [
                {
                    "name": t.container,
                    "image": t.image,
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": t.started_at}},
                }
            ],
        }

    def _terminated_status(
        self, t: _Tracked, code: int, reason: str, message: str
    ) -> dict[str, Any]:
        status = terminated_status(t.container, t.image, code, reason, message, t.started_at)
        status["conditions"] = [
            self._condition("Ready", "False", "PodCompleted", ""),
            self._condition("ContainersReady", "False", "PodCompleted", ""),
        ]
        return status

    async def _patch_status(self, t: _Tracked, status: Mapping[str, Any]) -> None:
        ended = status.get("phase") in ("Succeeded", "Failed")
        async with self._end_writes if ended else self._writes:
            await unparsed(
                self.core.patch_namespaced_pod_status(
                    t.name, t.namespace, {"status": status}, _preload_content=False
                )
            )


def terminated_status(
    container: str, image: str, code: int, reason: str, message: str, started_at: str = ""
) -> dict[str, Any]:
    """A pod status whose one container terminated with ``code``."""
    now = _now()
    status: dict[str, Any] = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": container,
                "image": image,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "message": message,
                        "startedAt": started_at or now,
                        "finishedAt": now,
                    }
                },
            }
        ],
    }
    if code != 0:
        status["reason"] = reason
        status["message"] = message
    return status


# Exit codes a Job's podFailurePolicy can act on (see controller/jobs.py).
EXIT_RETRY_ELSEWHERE = 75  # EX_TEMPFAIL: no car could take it now; not the unit's fault
EXIT_BAD_SPEC = 2  # the pod asks for what cars cannot do: retrying cannot help
EXIT_MODEL = 3  # the model cannot be fetched or loaded: retrying cannot help
EXIT_STOPPED = 143  # 128 + SIGTERM: stopped because the pod is deleted, as a kubelet does
_RETRY_ELSEWHERE = frozenset({"NoEligibleCar", "OfferTimeout", "CarLost"})
_MODEL = frozenset({"ModelHashMismatch", "ModelFetchFailed", "ModelLoadFailed"})


def exit_code(reason: str) -> int:
    """The container exit code a failure reason ends with."""
    if reason in _RETRY_ELSEWHERE:
        return EXIT_RETRY_ELSEWHERE
    if reason in _MODEL:
        return EXIT_MODEL
    if reason in (REASON_UNSUPPORTED, REASON_INVALID_INPUT):
        return EXIT_BAD_SPEC
    if reason == REASON_DELETED:
        return EXIT_STOPPED
    return 1


def _result_lines(first: int, outputs: Mapping[str, npt.NDArray[np.generic]]) -> list[str]:
    """Readable lines for a result chunk: one per item, the first few outputs of each."""
    if not outputs:
        return []
    n = len(next(iter(outputs.values())))
    lines = []
    for i in range(min(n, MAX_RESULT_LOG_ITEMS)):
        parts = []
        for name, array in outputs.items():
            value = array[i]
            if np.ndim(value) == 0:
                parts.append(f"{name}={value.item()}")
            else:
                flat = np.ravel(value)
                shown = ", ".join(f"{x:.4g}" for x in flat[:4])
                parts.append(f"{name}=[{shown}{', ...' if flat.size > 4 else ''}]")
        lines.append(f"item {first + i}: " + " ".join(parts))
    if n > MAX_RESULT_LOG_ITEMS:
        lines.append(f"... {n - MAX_RESULT_LOG_ITEMS} more items in this chunk")
    return lines
