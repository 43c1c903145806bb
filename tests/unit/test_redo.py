"""Units a quarantined car delivered unchecked are run again, and their file corrected."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from parkfleet.nodeagent.lifecycle import Pod
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.nodeagent.posting import EventPoster
from parkfleet.nodeagent.redo import Redoer, Unchecked, UncheckedUnits
from parkfleet.nodeagent.resultspool import ResultSpool
from parkfleet.nodeagent.taskio import ResultFile
from parkfleet.taskport import ModelRef, TaskEvent, TaskPort, TaskSpec

RIGHT = np.array([3, 1, 4], dtype=np.int64)
WRONG = np.array([0, 0, 0], dtype=np.int64)


class _Inputs:
    def read(self, start: int, end: int) -> np.ndarray:
        return np.zeros((end - start, 4), dtype=np.float32)


class FakePort:
    """Plain fake of the gateway's port: what was submitted, who is quarantined."""

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self.submitted: list[TaskSpec] = []
        self.released: list[str] = []

    def quarantined(self, car_id: str) -> bool:
        return car_id in self.bad

    async def submit(self, spec: TaskSpec) -> None:
        self.submitted.append(spec)

    def release(self, task_id: str) -> None:
        self.released.append(task_id)


class FakePoster:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, bool]] = []

    async def post(self, ref: dict[str, str], reason: str, message: str, *, warning: bool) -> None:
        self.events.append((ref["uid"], reason, message, warning))


def unit(tmp_path: Path, uid: str, cars: tuple[str, ...], labels: np.ndarray) -> Unchecked:
    result = ResultFile(tmp_path / "results" / f"{uid}.npz", f"job-of-{uid}")
    result.path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(result.path, label=labels, first_item=np.array([0]), job_uid=np.array(result.job_uid))
    spec = TaskSpec(
        task_id=uid,
        cell="eu-0",
        runtime="onnxruntime",
        model=ModelRef("0" * 64),
        input_name="input",
        output_names=("label",),
        batch_size=3,
        item_start=0,
        item_end=3,
        inputs=_Inputs(),
        sink=ResultSpool(None, None),
    )
    pod = Pod(uid=uid, namespace="ns", name=f"pod-{uid}", pool="eu")
    return Unchecked(pod, spec, result, cars)


def test_units_are_taken_by_any_of_their_cars_once_and_the_oldest_go_first(
    tmp_path: Path,
) -> None:
    units = UncheckedUnits(max_units=3)
    for i, cars in enumerate([("a",), ("a", "b"), ("b",), ("c",)]):
        units.add(unit(tmp_path, f"u{i}", cars, RIGHT))
    assert len(units) == 3  # u0 forgotten: the bound holds
    assert [u.pod.uid for u in units.take("a")] == ["u1"]
    assert [u.pod.uid for u in units.take("b")] == ["u2"]  # u1 went with car a
    assert units.take("a") == []
    assert units.take("nobody") == []
    assert [u.pod.uid for u in units.take("c")] == ["u3"]
    assert len(units) == 0


async def finish(redoer: Redoer, spec: TaskSpec, car: str, labels: np.ndarray | None) -> None:
    await redoer.on_event(TaskEvent("accepted", spec.task_id, spec.cell, 1, car_id=car))
    if labels is None:
        await redoer.on_event(TaskEvent("failed", spec.task_id, spec.cell, 1, reason="Boom"))
        return
    await spec.sink.write(0, {"label": labels})
    await redoer.on_event(TaskEvent("succeeded", spec.task_id, spec.cell, 1, items_done=3))


def redone(metrics: NodeAgentMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "parkfleet_results_redone_total", {"pool": "eu", "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("kept", "again", "outcome", "reason", "after"),
    [
        (WRONG, RIGHT, "replaced", "ResultReplaced", RIGHT),
        (RIGHT, RIGHT, "confirmed", "ResultConfirmed", RIGHT),
        (WRONG, None, "failed", "ResultRedoFailed", WRONG),
    ],
)
async def test_a_quarantined_cars_unchecked_unit_runs_again_elsewhere(
    tmp_path: Path,
    kept: np.ndarray,
    again: np.ndarray | None,
    outcome: str,
    reason: str,
    after: np.ndarray,
) -> None:
    port, poster, metrics = FakePort(), FakePoster(), NodeAgentMetrics()
    redoer = Redoer(cast(TaskPort, port), cast(EventPoster, poster), tmp_path / ".spool", metrics)
    u = unit(tmp_path, "u1", ("liar",), kept)
    redoer.kept(u)
    redoer.kept(unit(tmp_path, "u2", ("honest",), RIGHT))
    await asyncio.sleep(0)
    assert port.submitted == []  # nothing runs again while its cars are in good standing

    port.bad.add("liar")
    redoer.quarantined("liar")
    await redoer.settle()
    (spec,) = port.submitted
    assert spec.task_id == "u1-redo0"
    assert spec.avoid_cars == ("liar",)  # not the liar, nor any car of its owner
    assert (spec.item_start, spec.item_end) == (0, 3)

    await finish(redoer, spec, "checker", again)
    await redoer.settle()
    with np.load(u.result.path) as z:
        assert np.array_equal(z["label"], after)
        assert int(z["first_item"][0]) == 0
        assert str(z["job_uid"]) == "job-of-u1"  # a replaced unit file still names its job
    assert port.released == ["u1-redo0"]
    ((uid, why, message, warning),) = poster.events
    assert (uid, why, warning) == ("u1", reason, outcome != "confirmed")
    assert "liar" in message
    assert redone(metrics, outcome) == 1
    assert not (tmp_path / ".spool" / "u1-redo0").exists()
    # The replacing result is unchecked in its turn: remembered with its car.
    assert [x.pod.uid for x in redoer.units.take("checker")] == (
        ["u1"] if outcome == "replaced" else []
    )


async def test_a_unit_ending_on_a_car_already_quarantined_runs_again_at_once(
    tmp_path: Path,
) -> None:
    port, poster = FakePort(), FakePoster()
    port.bad.add("liar")
    redoer = Redoer(
        cast(TaskPort, port), cast(EventPoster, poster), tmp_path / ".spool", NodeAgentMetrics()
    )
    redoer.kept(unit(tmp_path, "u1", ("honest", "liar"), WRONG))
    await redoer.settle()
    (spec,) = port.submitted
    assert spec.avoid_cars == ("honest", "liar")
    assert len(redoer.units) == 0
