"""The simulator's true meter: each car's own power, integrated while it holds a task."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from parkfleet.energymodel import CarPower
from parkfleet.sim.truemeter import MeteredCompute, TrueMeter, TruePower

POWER = TruePower(gpu_load_w=60.0, gpu_idle_w=12.0, awake_base_w=240.0, charging_efficiency=0.8)


class FakeClock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def test_draws_are_seeded_and_symmetric_around_the_nominal() -> None:
    nominal = CarPower()
    a = TruePower.draw(nominal, random.Random("0:power:1"))
    assert a == TruePower.draw(nominal, random.Random("0:power:1"))
    draws = [TruePower.draw(nominal, random.Random(f"0:power:{i}")) for i in range(4000)]
    for p in draws:
        assert 0.85 * 60.0 <= p.gpu_load_w <= 1.15 * 60.0
        assert 0.85 * 240.0 <= p.awake_base_w <= 1.15 * 240.0
        assert 0.87 <= p.charging_efficiency <= 0.93
        assert 0.15 * p.gpu_load_w <= p.gpu_idle_w <= 0.25 * p.gpu_load_w
    assert statistics.fmean(p.awake_base_w for p in draws) == pytest.approx(240.0, rel=0.01)
    assert statistics.fmean(p.gpu_load_w for p in draws) == pytest.approx(60.0, rel=0.01)
    assert statistics.fmean(p.charging_efficiency for p in draws) == pytest.approx(0.9, abs=0.002)


def test_efficiency_never_above_one() -> None:
    nominal = CarPower(charging_efficiency=0.99)
    for i in range(200):
        assert TruePower.draw(nominal, random.Random(i)).charging_efficiency <= 1.0


def test_nothing_while_no_task_is_held() -> None:
    clock = FakeClock()
    meter = TrueMeter(POWER, clock)
    clock.t += 3600.0
    meter.observe(False)
    assert meter.wh == 0.0


def test_a_held_task_draws_base_and_idle_gpu_then_load_while_computing() -> None:
    clock = FakeClock()
    meter = TrueMeter(POWER, clock)
    meter.observe(True)
    clock.t += 1800.0  # half an hour waiting: base + idle GPU
    meter.gpu_started()
    clock.t += 1800.0  # half an hour computing: base + GPU under load
    meter.gpu_ended()
    meter.observe(False)
    clock.t += 3600.0  # free again: nothing
    meter.observe(False)
    assert meter.wh == pytest.approx((240.0 + 0.5 * 12.0 + 0.5 * 60.0) / 0.8)
    assert meter.held_s == pytest.approx(3600.0)
    assert meter.gpu_load_s == pytest.approx(1800.0)


def test_overlapping_calls_count_once_and_a_call_in_flight_is_charged_so_far() -> None:
    clock = FakeClock()
    meter = TrueMeter(POWER, clock)
    meter.observe(True)
    meter.gpu_started()
    meter.gpu_started()  # the runner queues the next slice while one runs
    clock.t += 1800.0
    meter.gpu_ended()
    clock.t += 1800.0
    meter.observe(True)  # the second call still runs
    assert meter.wh == pytest.approx((240.0 + 60.0) / 0.8)
    clock.t += 3600.0
    meter.gpu_ended()
    meter.observe(False)
    assert meter.wh == pytest.approx(2 * (240.0 + 60.0) / 0.8)


def test_sampling_is_unbiased_at_the_edges() -> None:
    # A task from 0.3 to 10.3 s, sampled every second: the late start and the late end
    # cancel, 10 s held as on the wall.
    clock = FakeClock()
    clock.t = 0.0
    meter = TrueMeter(POWER, clock)
    for k in range(13):
        clock.t = float(k)
        meter.observe(0.3 <= clock.t < 10.3)
    assert meter.held_s == pytest.approx(10.0)


def test_work_seen_only_by_the_compute_still_counts() -> None:
    clock = FakeClock()
    meter = TrueMeter(POWER, clock)
    meter.observe(False)
    meter.gpu_started()
    clock.t += 3600.0
    meter.gpu_ended()
    meter.observe(False)  # the hold began and ended between two samples
    assert meter.wh == pytest.approx(300.0 / 0.8)


class FakeSession:
    def __init__(self, meter: TrueMeter) -> None:
        self.providers = ["CPUExecutionProvider"]
        self.output_names = ["y"]
        self.input_types = {"x": "tensor(float)"}
        self.meter = meter
        self.computing_seen: list[bool] = []

    async def infer(self, inputs: object, names: object, batch_size: int) -> list[np.ndarray]:
        self.computing_seen.append(self.meter.computing)
        return [np.zeros(1)]


class FakeCompute:
    def __init__(self, session: FakeSession) -> None:
        self.inner = session

    async def session(self, sha256: str, model: bytes) -> FakeSession:
        return self.inner


async def test_metered_compute_marks_the_gpu_busy_during_each_call() -> None:
    clock = FakeClock()
    meter = TrueMeter(POWER, clock)
    inner = FakeSession(meter)
    session = await MeteredCompute(FakeCompute(inner), meter).session("0" * 64, b"")  # type: ignore[arg-type]
    assert session.output_names == ["y"]
    await session.infer({"x": np.zeros((1, 1))}, ["y"], 1)
    assert inner.computing_seen == [True]
    assert not meter.computing
