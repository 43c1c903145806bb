"""Pods bound to a cell's Node become tasks on the gateway; task events become pod status.

The pod's state is told truthfully: ``Pending`` with a ``parkfleet.io/CarAssigned``
condition while it waits for a car, ``Running`` with container status and
``startedAt`` once a car runs it, ``Succeeded``/``Failed`` with exit code, reason and
message at the end. A car leaving mid-task moves the task to another car of the cell
(the gateway resumes it from its checkpoint) and the pod gets a ``Moved`` Event while
it stays ``Running``. Deleting the pod cancels the task.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Mapping
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
from parkfleet.nodeagent.logs import LogStore
from parkfleet.nodeagent.posting import EventPoster
from parkfleet.nodeagent.taskio import DirectorySink, NpyInput, resolve_under
from parkfleet.nodeagent.translate import PodTask, Unsupported, translate

__all__ = ["CAR_ASSIGNED", "REASON_UNSUPPORTED", "PodDriver"]

log = logging.getLogger(__name__)

CAR_ASSIGNED = "parkfleet.io/CarAssigned"
REASON_UNSUPPORTED = "UnsupportedPodSpec"
REASON_INVALID_INPUT = "InvalidTaskInput"
MAX_RESULT_LOG_ITEMS = 64  # per chunk: a log is for people, the result file is for data


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: Mapping[str, Any]) -> str:
    """``namespace/name`` of a pod."""
    meta = pod["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


@dataclass
class _Tracked:
    uid: str
    namespace: str
    name: str
    cell: str
    container: str
    image: str
    task: PodTask
    sink: DirectorySink
    started_at: str = ""
    running: bool = False
    ended: bool = False
    cars: list[str] = field(default_factory=list)

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
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.gateway = gateway
        self.pool_of = pool_of
        self.data_root = data_root
        self.logs = logs
        self.poster = poster
        self.tracked: dict[str, _Tracked] = {}
        self.events = gateway.events()

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
            spec, sink = self._task_spec(pod, cell, task, pool)
        except (Unsupported, ModelNotFound, ValueError, OSError) as exc:
            await self._fail_early(pod, REASON_INVALID_INPUT, str(exc))
            return
        tracked = _Tracked(
            uid=uid,
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            cell=cell,
            container=container,
            image=image,
            task=task,
            sink=sink,
        )
        self.tracked[uid] = tracked
        if phase == "Running":
            # We restarted (or the gateway did) while the pod ran: its task starts again
            # on a car; the pod stays Running, as it is.
            tracked.running = True
            tracked.started_at = str((pod.get("status") or {}).get("startTime") or _now())
            self.logs.write(tracked.key, "parkfleet: gateway restarted; running the task again")
            await self.gateway.submit(spec)
            return
        self.logs.write(
            tracked.key,
            f"parkfleet: task {uid} for items {spec.item_start}..{spec.item_end - 1} "
            f"queued on cell {cell}",
        )
        await self.gateway.submit(spec)
        await self._patch_status(
            tracked,
            {
                "phase": "Pending",
                "conditions": [
                    self._condition(CAR_ASSIGNED, "False", "WaitingForCar", "waiting for a car"),
                ],
            },
        )

    def _check_capacity(self, task: PodTask, cell: str) -> None:
        cap = self.gateway.capacity().get(cell)
        if task.gpu_memory_mib and cap is not None and cap.cars_connected:
            biggest = self.gateway.max_gpu_memory_mib(cell)
            if task.gpu_memory_mib > biggest:
                raise Unsupported(
                    "spec.containers[0].env[PARKFLEET_GPU_MEMORY_MIB]",
                    f"{task.gpu_memory_mib} MiB is more GPU memory than any car of cell "
                    f"{cell} has ({biggest} MiB)",
                )

    def _task_spec(
        self, pod: Mapping[str, Any], cell: str, task: PodTask, pool: FleetPoolSpec
    ) -> tuple[TaskSpec, DirectorySink]:
        model = self._model(task)
        info = self.gateway.models.describe(model.sha256)
        source = NpyInput(resolve_under(self.data_root, task.input_path))
        end = task.item_end if task.item_end is not None else source.items
        if end > source.items:
            raise Unsupported(
                "spec.containers[0].env[PARKFLEET_ITEMS]",
                f"asks for items up to {end - 1} but {task.input_path} holds {source.items}",
            )
        key = pod_key(pod)
        result: Path | None = None
        if task.output_dir:
            out_dir = resolve_under(self.data_root, task.output_dir)
            result = out_dir / f"{pod['metadata']['name']}.npz"

        def to_log(first: int, outputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
            self.logs.write(key, *_result_lines(first, outputs))

        sink = DirectorySink(result, on_chunk=to_log)
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
            sink=sink,
            gpu_memory_mib=task.gpu_memory_mib,
            grace_s=pool.grace_s,
        )
        return spec, sink

    def _model(self, task: PodTask) -> ModelRef:
        if task.model_sha256:
            self.gateway.models.path(task.model_sha256)  # raises ModelNotFound
            return ModelRef(sha256=task.model_sha256, uri=task.model_uri)
        return self.gateway.models.lookup(task.model_name)

    async def forget(self, pod: Mapping[str, Any]) -> None:
        """The pod object is gone: cancel its task if it still runs."""
        uid = str(pod["metadata"]["uid"])
        tracked = self.tracked.pop(uid, None)
        if tracked is not None and not tracked.ended:
            await self.gateway.cancel(uid, "PodDeleted")
        self.logs.drop(pod_key(pod))

    async def _finish_deletion(self, pod: Mapping[str, Any]) -> None:
        # A kubelet removes the pod object once its containers stopped; the task's
        # cancel is immediate, so the pod can go at once.
        meta = pod["metadata"]
        uid = str(meta["uid"])
        tracked = self.tracked.get(uid)
        if tracked is not None and not tracked.ended:
            await self.gateway.cancel(uid, "PodDeleted")
            tracked.ended = True
        with contextlib.suppress(ApiException):
            await self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )

    async def _fail_early(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        c = (pod["spec"].get("containers") or [{}])[0]
        now = _now()
        status = {
            "phase": "Failed",
            "reason": reason,
            "message": message,
            "conditions": [self._condition(CAR_ASSIGNED, "False", reason, message)],
            "containerStatuses": [
                {
                    "name": c.get("name", "main"),
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 2,
                            "reason": reason,
                            "message": message,
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        }
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
        self.logs.write(pod_key(pod), f"parkfleet: {reason}: {message}")
        self.logs.close(pod_key(pod))

    # ---- task events -> pod status ---------------------------------------------------

    async def run(self) -> None:
        """Follows the gateway's task events until cancelled."""
        async for event in self.events:
            tracked = self.tracked.get(event.task_id)
            if tracked is None:
                continue
            try:
                await self._on_event(tracked, event)
            except ApiException as exc:
                log.warning("pod %s: status update failed: %s", tracked.key, exc.reason)
            except Exception:
                log.exception("pod %s: handling %s failed", tracked.key, event.kind)

    async def _on_event(self, t: _Tracked, e: TaskEvent) -> None:
        if e.kind == "accepted":
            if e.car_id and (not t.cars or t.cars[-1] != e.car_id):
                t.cars.append(e.car_id)
            if not t.running:
                t.running = True
                t.started_at = _now()
                self.logs.write(t.key, f"parkfleet: running on car {e.car_id}")
                await self.poster.post(t.ref, "Started", f"running on car {e.car_id}")
                await self._patch_status(t, self._running_status(t, e.car_id))
        elif e.kind == "moved":
            msg = f"moved from car {e.from_car} to car {e.car_id}, resuming at item {e.checkpoint}"
            self.logs.write(t.key, f"parkfleet: {msg}")
            await self.poster.post(t.ref, "Moved", msg)
        elif e.kind == "lost":
            msg = (
                f"car {e.from_car or e.car_id} left ({e.reason}); the task waits for "
                f"another car of cell {t.cell} from item {e.checkpoint}"
            )
            self.logs.write(t.key, f"parkfleet: {msg}")
            await self.poster.post(t.ref, "CarLost", msg, warning=True)
        elif e.kind == "log":
            self.logs.write(t.key, *e.lines)
        elif e.kind == "succeeded":
            t.ended = True
            await t.sink.completed.wait()
            msg = f"{t.sink.items} items on {len(set(t.cars)) or 1} car(s), {e.energy_wh:.3g} Wh"
            if e.energy_modelled:
                msg += " (modelled)"
            self.logs.write(t.key, f"parkfleet: done: {msg}")
            self.logs.close(t.key)
            await self._patch_status(t, self._terminated_status(t, 0, "Completed", msg))
            await self.poster.post(t.ref, "Completed", msg)
            self.gateway.forget(t.uid)
        elif e.kind in ("failed", "cancelled"):
            t.ended = True
            reason = e.reason or ("Cancelled" if e.kind == "cancelled" else "TaskFailed")
            self.logs.write(t.key, f"parkfleet: {reason}: {e.message}")
            self.logs.close(t.key)
            if e.kind == "failed":
                await self._patch_status(t, self._terminated_status(t, 1, reason, e.message))
                await self.poster.post(t.ref, reason, e.message, warning=True)
            self.gateway.forget(t.uid)

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
        now = _now()
        phase = "Succeeded" if code == 0 else "Failed"
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                self._condition("Ready", "False", "PodCompleted", ""),
                self._condition("ContainersReady", "False", "PodCompleted", ""),
            ],
            "containerStatuses": [
                {
                    "name": t.container,
                    "image": t.image,
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "message": message,
                            "startedAt": t.started_at or now,
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

    async def _patch_status(self, t: _Tracked, status: Mapping[str, Any]) -> None:
        await self.core.patch_namespaced_pod_status(t.name, t.namespace, {"status": status})


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
