"""Dishonest cars over real mTLS: no claim steers placement or inflates a cell, a car
can fail only its own attempt, one owner's certificates never hold two copies of a unit,
and a car whose results lose the vote is quarantined (docs/security.md).

The gateway is the real one on 127.0.0.1; the cars are ``tests/rogue_car.py`` (the real
protocol code) and ``tests/carlink_probe.py`` for the honest ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from parkfleet.certs import FleetCA
from parkfleet.contract import CarCounts
from parkfleet.energymodel import CarPower
from parkfleet.gateway import MemorySink, TaskSpec
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.taskport import OutputSpec
from tests.carlink_probe import ProbeCar, wait_until
from tests.integration.gateway_env import Env, start_gateway
from tests.integration.test_gateway_tasks import Recorder, spec
from tests.rogue_car import RogueCar

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


@pytest.fixture
async def env(tmp_path: Path, ca: FleetCA) -> AsyncIterator[Env]:
    e = await start_gateway(tmp_path, ca, car_wait_s=5.0, max_attempts=3)
    yield e
    await e.gateway.stop(0)


@pytest.fixture
async def rec(env: Env) -> Recorder:
    return Recorder(env)


def rogue(env: Env, car_id: str) -> RogueCar:
    return RogueCar(env.gateway.address, env.ca.cert_pem, env.pair(car_id))


async def offered(env: Env, car: RogueCar, task: TaskSpec) -> pb.TaskOffer:
    """Connects ``car`` as the cell's only eligible car, submits ``task``, its offer."""
    await car.connect()
    await car.telemetry()
    await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 1)
    await env.gateway.submit(task)
    return await car.offer()


async def refused(car: ProbeCar) -> tuple[grpc.StatusCode, str]:
    """The status the gateway closed the car's stream with."""
    try:
        async with asyncio.timeout(10):
            while await car.recv() is not None:
                pass
    except grpc.aio.AioRpcError as e:
        return e.code(), str(e.details())
    return await car.status()


@pytest.mark.parametrize(
    ("telemetry", "field"),
    [
        ({"link_quality": 1e9}, "telemetry.link_quality"),
        ({"link_quality": -0.5}, "telemetry.link_quality"),
        ({"link_quality": float("nan")}, "telemetry.link_quality"),
        ({"gpu_temp_c": float("inf")}, "telemetry.gpu_temp_c"),
        ({"energy_used_today_wh": -1.0}, "telemetry.energy_used_today_wh"),
        ({"free_gpu_memory_mib": 2**63}, "telemetry.free_gpu_memory_mib"),
        ({"state": 7}, "telemetry.state"),
    ],
)
async def test_a_telemetry_claim_out_of_range_closes_the_stream(
    env: Env, telemetry: dict[str, Any], field: str
) -> None:
    async with rogue(env, "liar") as car:
        await car.connect()
        await car.telemetry(**telemetry)
        code, details = await refused(car)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details
    assert env.gateway.capacity("p-0") == CarCounts()


@pytest.mark.parametrize(
    ("capabilities", "field"),
    [
        ({"gpu_count": 4_000_000_000}, "hello.capabilities.gpu_count"),
        ({"gpu_count": 9}, "hello.capabilities.gpu_count"),  # over this gateway's 8
        ({"gpu_memory_mib": 2**40}, "hello.capabilities.gpu_memory_mib"),
        ({"gpu_power_w": float("nan")}, "hello.capabilities.gpu_power_w"),
        ({"awake_base_w": 1e9}, "hello.capabilities.awake_base_w"),
        # A tiny efficiency would multiply every task's energy (and the owner's count).
        ({"charging_efficiency": 1e-300}, "hello.capabilities.charging_efficiency"),
        ({"charging_efficiency": 1.5}, "hello.capabilities.charging_efficiency"),
    ],
)
async def test_a_capacity_claim_out_of_range_is_refused_at_hello(
    env: Env, capabilities: dict[str, Any], field: str
) -> None:
    caps = {
        "gpu_model": "liar",
        "gpu_count": 1,
        "gpu_memory_mib": 8192,
        "runtimes": ["onnxruntime"],
    }
    caps.update(capabilities)
    hello = ProbeCar.hello(capabilities=pb.Capabilities(**caps))
    async with rogue(env, "inflater") as car:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.connect(hello)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(err.value.details())
    assert env.gateway.capacity("p-0").gpus == 0


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "Z" * 65])
async def test_an_owner_time_zone_the_gateway_does_not_know_is_refused_at_hello(
    env: Env, zone: str
) -> None:
    hello = ProbeCar.hello(policy=pb.OwnerPolicy(time_zone=zone))
    async with rogue(env, "nowhere") as car:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await car.connect(hello)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello.policy.time_zone" in str(err.value.details())
    assert env.gateway.capacity("p-0") == CarCounts()


async def test_the_best_claims_win_no_more_than_a_share(env: Env) -> None:
    """A car claiming a perfect link and battery gets its turn, like the others."""
    cars = [env.car(f"honest-{i}") for i in range(3)]
    cheat = rogue(env, "cheat")
    counts: dict[str, int] = {}
    try:
        for car in cars:
            await car.connect()
            await car.telemetry(link_quality=0.7, soc_percent=60.0)
        await cheat.connect()
        await cheat.telemetry(link_quality=1.0, soc_percent=100.0)
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 4)
        workers = [asyncio.create_task(c.work()) for c in [*cars, cheat]]
        events = env.gateway.events()
        for i in range(12):
            sink = MemorySink()
            data = np.zeros((4, 1), np.float32)
            await env.gateway.submit(spec(data, sink, task_id=f"t{i}", output_names=("y",)))
            async with asyncio.timeout(10):
                async for e in events:
                    if e.task_id == f"t{i}" and e.kind == "accepted":
                        counts[e.car_id] = counts.get(e.car_id, 0) + 1
                    if e.task_id == f"t{i}" and e.kind in ("succeeded", "failed"):
                        assert e.kind == "succeeded"
                        break
            env.gateway.release(f"t{i}")
        for w in workers:
            w.cancel()
    finally:
        for car in [*cars, cheat]:
            await car.close()
    assert counts == {"honest-0": 3, "honest-1": 3, "honest-2": 3, "cheat": 3}


@pytest.mark.parametrize("owner", ["", "mallory"])
async def test_a_faked_fatal_failure_moves_the_task_to_another_car(
    env: Env, rec: Recorder, owner: str
) -> None:
    """With an owner on its certificate or not, the car that failed is not offered the
    task again (it would be free to fail every attempt)."""
    if owner:
        env.pairs["saboteur"] = env.ca.issue_car("saboteur", {"pool": "p"}, owner=owner)
    data = np.arange(8, dtype=np.float32).reshape(8, 1)
    sink = MemorySink()
    async with rogue(env, "saboteur") as bad:
        offer = await offered(env, bad, spec(data, sink, output_names=("y",)))
        await bad.accept(offer)
        await bad.fail(offer, "ModelHashMismatch", "\x1b[31mfail the job\u202e", retriable=False)
        lost = await rec.wait("lost")
        assert lost.reason == "ModelHashMismatch"
        assert "\x1b" not in lost.message
        assert "\u202e" not in lost.message
        async with env.car("honest") as good:
            await good.connect()
            await good.telemetry()
            worker = asyncio.create_task(good.work())
            end = await rec.wait("succeeded")
            worker.cancel()
    assert end.task_id == "t1"
    assert "failed" not in rec.kinds()
    assert sink.items() == list(range(8))
    status = env.gateway.task("t1")
    assert status is not None
    assert status.cars == ("saboteur", "honest")


async def test_a_reason_from_outside_the_closed_set_is_not_repeated(
    env: Env, rec: Recorder
) -> None:
    data = np.zeros((4, 1), np.float32)
    async with rogue(env, "babbler") as bad:
        offer = await offered(env, bad, spec(data, MemorySink(), output_names=("y",)))
        await bad.fail(offer, "Reason-" + "x" * 200, "y" * 4000, retriable=True)
        lost = await rec.wait("lost")
    assert lost.reason == "CarFailed"
    assert len(lost.message) <= 512


async def test_a_task_every_car_fails_ends_after_the_attempt_bound(env: Env, rec: Recorder) -> None:
    data = np.zeros((4, 1), np.float32)
    cars = [rogue(env, f"bad-{i}") for i in range(4)]
    try:
        for car in cars:
            await car.connect()
            await car.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 4)
        await env.gateway.submit(spec(data, MemorySink(), output_names=("y",)))

        async def fail_everything(car: RogueCar) -> None:
            while True:
                offer = await car.offer()
                await car.fail(offer, "InferenceError", "no", retriable=True)

        attackers = [asyncio.create_task(fail_everything(c)) for c in cars]
        end = await rec.wait("failed")
        for a in attackers:
            a.cancel()
    finally:
        for car in cars:
            await car.close()
    assert end.reason == "AttemptsExhausted"
    assert "3 cars" in end.message
    assert len(rec.of("lost")) == 3  # one attempt on each of three distinct cars
    sample = env.gateway.metrics.registry.get_sample_value
    assert sample("parkfleet_gateway_task_attempts_exhausted_total", {"pool": "p"}) == 1


@pytest.mark.parametrize(
    ("report", "field"),
    [
        ({"energy_wh": float("inf")}, "done.energy_wh"),
        ({"energy_wh": -5.0}, "done.energy_wh"),
        ({"energy_wh": 1e300}, "done.energy_wh"),
    ],
)
async def test_forged_figures_close_the_stream_and_the_task_moves(
    env: Env, rec: Recorder, report: dict[str, Any], field: str
) -> None:
    data = np.zeros((4, 1), np.float32)
    sink = MemorySink()
    async with rogue(env, "forger") as bad:
        offer = await offered(env, bad, spec(data, sink, output_names=("y",)))
        await bad.accept(offer)
        await bad.result(offer, 0, {"y": np.zeros((4, 1), np.float32)})
        await bad.done(offer, items=4, **report)
        code, details = await refused(bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details
    # Every result was in, so the task is done; the forged figure counted for nothing: the
    # task's energy is the gateway's own account (its seconds x the declared power), and
    # the car's figure is not even kept as a cross-check.
    end = await rec.wait("succeeded")
    sample = env.gateway.metrics.registry.get_sample_value
    seconds = sample("parkfleet_gateway_task_seconds_total", {"pool": "p"})
    assert seconds is not None
    assert end.energy_wh == pytest.approx(CarPower().task_wh(seconds))
    assert not sample("parkfleet_gateway_car_reported_energy_joules_total", {"pool": "p"})


@pytest.mark.parametrize(
    ("dtype", "result", "words"),
    [
        # The shape bomb: 1-item results far larger than the model's items.
        ("float32", np.zeros((1, 700_000), np.float32), "items of shape [700000]"),
        ("float32", np.zeros((4, 1, 1), np.float32), "items of shape [1, 1]"),
        ("int64", np.zeros((4, 1), np.float32), "is float32; the model gives int64"),
    ],
)
async def test_results_unlike_the_models_outputs_close_the_stream(
    env: Env, rec: Recorder, dtype: str, result: np.ndarray, words: str
) -> None:
    data = np.zeros((4, 1), np.float32)
    declared = (OutputSpec("y", dtype, (1,)),)
    sink = MemorySink()
    async with rogue(env, "bomber") as bad:
        offer = await offered(
            env, bad, spec(data, sink, output_names=("y",), output_specs=declared)
        )
        await bad.accept(offer)
        await bad.result(offer, 0, {"y": result})
        code, details = await refused(bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details
    assert sink.chunks == []  # nothing of it was kept
    lost = await rec.wait("lost")
    assert lost.reason == "ProtocolViolation"


def sample(env: Env, name: str, **labels: str) -> float:
    return env.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_two_certificates_of_one_owner_never_hold_both_copies_of_a_unit(
    env: Env, rec: Recorder
) -> None:
    """Colluding certificates: by car id alone, the second copy would go to mallory-2
    (idle longer than bob); by owner it goes to bob, every time."""
    for car_id in ("mallory-1", "mallory-2"):
        env.pairs[car_id] = env.ca.issue_car(car_id, {"pool": "p"}, owner="mallory")
    cars = [env.car("mallory-1"), env.car("mallory-2"), env.car("bob")]
    try:
        for n, car in enumerate(cars, 1):  # in this order: the colluders idle longest
            await car.connect()
            await car.telemetry()
            await wait_until(lambda n=n: env.gateway.capacity("p-0").cars_eligible == n)
        workers = [asyncio.create_task(c.work()) for c in cars]
        data = np.arange(4, dtype=np.float32).reshape(4, 1)
        for unit in range(4):
            ids = [f"u{unit}-r0", f"u{unit}-r1"]
            for task_id in ids:
                await env.gateway.submit(
                    spec(data, MemorySink(), task_id=task_id, output_names=("y",), group=f"u{unit}")
                )
            for task_id in ids:
                await wait_until(lambda t=task_id: "succeeded" in rec.kinds(t))
            holders = set()
            for task_id in ids:
                status = env.gateway.task(task_id)
                assert status is not None
                holders.add(status.cars[-1])
            assert "bob" in holders, (unit, holders)
            assert len(holders) == 2
            for task_id in ids:
                env.gateway.release(task_id)
        for w in workers:
            w.cancel()
    finally:
        for car in cars:
            await car.close()


async def test_a_car_whose_results_lose_the_vote_is_quarantined_and_offered_nothing(
    env: Env, rec: Recorder
) -> None:
    data = np.arange(4, dtype=np.float32).reshape(4, 1)
    honest = env.car("honest")
    liar = rogue(env, "liar")
    try:
        await liar.connect()
        await liar.telemetry()
        await honest.connect()
        await honest.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 2)
        lying = asyncio.create_task(liar.lie())
        working = asyncio.create_task(honest.work())
        for unit in range(2):
            sinks = {f"u{unit}-r{i}": MemorySink() for i in range(2)}
            for task_id, sink in sinks.items():
                await env.gateway.submit(
                    spec(data, sink, task_id=task_id, output_names=("y",), group=f"u{unit}")
                )
            for task_id in sinks:
                await wait_until(lambda t=task_id: "succeeded" in rec.kinds(t))
            quarantined = []
            for task_id, sink in sinks.items():
                # The verdict the node agent's vote gives (the echo is the right answer).
                agreed = bool(np.array_equal(sink.output("y"), data))
                quarantined += env.gateway.record_verdict(task_id, agreed)
                env.gateway.release(task_id)
            assert quarantined == ([] if unit == 0 else ["liar"])
        assert sample(env, "parkfleet_gateway_car_strikes_total", pool="p") == 2
        assert sample(env, "parkfleet_gateway_car_agreements_total", pool="p") == 2
        quarantined_gauge = {"pool": "p", "state": "quarantined"}
        assert sample(env, "parkfleet_gateway_cars_by_reputation", **quarantined_gauge) == 1
        # No more work for the liar, though it idles and its stream stays open; the
        # honest car takes every task, one after the other.
        for i in range(3):
            await env.gateway.submit(spec(data, MemorySink(), task_id=f"s{i}", output_names=("y",)))
        for i in range(3):
            await wait_until(lambda t=f"s{i}": "succeeded" in rec.kinds(t))
            status = env.gateway.task(f"s{i}")
            assert status is not None
            assert status.cars == ("honest",)
        assert env.gateway.capacity("p-0").cars_connected == 2
        assert env.gateway.capacity("p-0").gpus == 1  # the liar's GPU is not offered
        assert not lying.done()
        # Its reputation is the gateway's, not its stream's: reconnecting changes nothing.
        lying.cancel()
        await liar.close()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_connected == 1)
        assert sample(env, "parkfleet_gateway_cars_by_reputation", **quarantined_gauge) == 0
        liar = rogue(env, "liar")
        await liar.connect()
        await liar.telemetry()
        await wait_until(lambda: env.gateway.capacity("p-0").cars_eligible == 2)
        assert sample(env, "parkfleet_gateway_cars_by_reputation", **quarantined_gauge) == 1
        await env.gateway.submit(spec(data, MemorySink(), task_id="after", output_names=("y",)))
        await wait_until(lambda: "succeeded" in rec.kinds("after"))
        status = env.gateway.task("after")
        assert status is not None
        assert status.cars == ("honest",)
        working.cancel()
    finally:
        await honest.close()
        await liar.close()
