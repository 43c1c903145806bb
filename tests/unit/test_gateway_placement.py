"""Placement and cell assignment: pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from parkfleet.gateway.cells import cell_of
from parkfleet.gateway.placement import choose_car, fits


@dataclass
class Car:
    car_id: str
    runtimes: frozenset[str] = frozenset({"onnxruntime"})
    gpu_memory_mib: int = 8192
    free_gpu_memory_mib: int = 0
    soc_percent: float = 80.0
    link_quality: float = 0.9
    idle_since: float = 0.0
    owner: str = ""


def test_fits_checks_runtime_and_memory() -> None:
    assert fits(Car("a"), "onnxruntime", 8192)
    assert not fits(Car("a"), "onnxruntime", 8193)
    assert not fits(Car("a"), "tensorrt", 0)
    # Free memory from telemetry, when reported, is what counts.
    assert not fits(Car("a", free_gpu_memory_mib=1000), "onnxruntime", 2000)


def test_choose_prefers_a_usable_link_then_the_longest_idle_then_id() -> None:
    cars = [
        Car("c", link_quality=0.2, idle_since=1.0),
        Car("b", link_quality=0.9, idle_since=5.0),
        Car("a", link_quality=0.6, idle_since=5.0),
        Car("d", link_quality=1.0, idle_since=7.0),
    ]
    chosen = choose_car(cars, "onnxruntime", 0)
    assert chosen is not None
    assert chosen.car_id == "a"  # b's better link counts for nothing above GOOD_LINK
    chosen = choose_car(cars, "onnxruntime", 0, exclude={"a"})
    assert chosen is not None
    assert chosen.car_id == "b"
    chosen = choose_car(cars, "onnxruntime", 0, exclude={"a", "b", "d"})
    assert chosen is not None
    assert chosen.car_id == "c"  # a poor link still beats no car


def test_no_claim_lets_a_car_take_more_than_its_share() -> None:
    # Ten idle cars, one of which claims the best link and battery there are: tasks
    # placed one after another, each car going back to the end of the queue when it
    # finishes, spread evenly.
    cars = [Car(f"car-{i}", link_quality=0.6, soc_percent=50, idle_since=i) for i in range(10)]
    cars[3].link_quality, cars[3].soc_percent = 1.0, 100.0
    taken: dict[str, int] = {}
    for clock in range(10, 110):
        chosen = choose_car(cars, "onnxruntime", 0)
        assert chosen is not None
        taken[chosen.car_id] = taken.get(chosen.car_id, 0) + 1
        chosen.idle_since = clock  # done at once, idle again behind the others
    assert set(taken.values()) == {10}


def test_choose_none_when_nothing_fits() -> None:
    assert choose_car([], "onnxruntime", 0) is None
    assert choose_car([Car("a")], "onnxruntime", 0, exclude={"a"}) is None
    assert choose_car([Car("a", gpu_memory_mib=100)], "onnxruntime", 200) is None


def test_cells_are_deterministic() -> None:
    assert cell_of("car-1", {}) == "default-0"
    assert cell_of("car-1", {"pool": "eu"}) == "eu-0"
    assert cell_of("car-1", {"pool": "eu", "cell": "7"}, cells_per_pool=4) == "eu-7"
    spread = {cell_of(f"car-{i}", {"pool": "eu"}, cells_per_pool=4) for i in range(100)}
    assert spread == {"eu-0", "eu-1", "eu-2", "eu-3"}
    assert cell_of("car-42", {"pool": "eu"}, 4) == cell_of("car-42", {"pool": "eu"}, 4)


def test_copies_of_one_unit_avoid_every_car_of_an_owner_that_has_one() -> None:
    cars = [
        Car("a1", owner="alice", idle_since=1.0),
        Car("a2", owner="alice", idle_since=2.0),
        Car("b1", owner="bob", idle_since=3.0),
    ]
    chosen = choose_car(cars, "onnxruntime", 0, exclude_owners={"alice"})
    assert chosen is not None
    assert chosen.car_id == "b1"
    assert choose_car(cars, "onnxruntime", 0, exclude_owners={"alice", "bob"}) is None
