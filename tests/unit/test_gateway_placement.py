"""Placement and cell assignment: pure functions. Departure-aware placement: cars that
stay long enough for a task's estimated run time first, cars known to leave before last."""

from __future__ import annotations

from dataclasses import dataclass

from parkfleet.gateway.cells import cell_of
from parkfleet.gateway.placement import (
    MIN_CHECKPOINT_S,
    STAY_MARGIN,
    checkpoint_interval_s,
    choose_car,
    fits,
    stay_fit,
)


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
    stay: float | None = None  # seconds it claims it stays (None: no claim)


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


def stay_of(car: Car) -> float | None:
    return car.stay


def pick(cars: list[Car], estimate: float | None, aware: bool = True) -> str:
    chosen = choose_car(
        cars, "onnxruntime", 0, stay_s=stay_of if aware else None, estimate_s=estimate
    )
    assert chosen is not None
    return chosen.car_id


def test_fit_classes() -> None:
    assert stay_fit(None, 100.0) == "unknown"
    assert stay_fit(1000.0, None) == "unknown"
    assert stay_fit(100.0 * STAY_MARGIN, 100.0) == "stays"
    assert stay_fit(100.0 * STAY_MARGIN - 1, 100.0) == "leaves"
    assert stay_fit(0.0, 100.0) == "leaves"


def test_a_car_that_stays_beats_one_idle_longer_that_leaves_and_blind_placement_does_not() -> None:
    cars = [Car("leaver", stay=30.0, idle_since=1.0), Car("stayer", stay=3600.0, idle_since=5.0)]
    assert pick(cars, 100.0) == "stayer"
    assert pick(cars, 100.0, aware=False) == "leaver"  # today's order: the longest idle
    # Without an estimate (no attempt of the job measured yet) the claims decide nothing.
    assert pick(cars, None) == "leaver"


def test_unknown_comes_between_stays_and_leaves() -> None:
    cars = [
        Car("leaver", stay=30.0, idle_since=1.0),
        Car("silent", stay=None, idle_since=2.0),
        Car("stayer", stay=3600.0, idle_since=3.0),
    ]
    assert pick(cars, 100.0) == "stayer"
    assert pick(cars[:2], 100.0) == "silent"


def test_when_every_car_leaves_too_soon_the_one_that_stays_longest_goes() -> None:
    cars = [
        Car("a", stay=10.0, idle_since=1.0),
        Car("b", stay=60.0, idle_since=3.0),
        Car("c", stay=40.0, idle_since=2.0),
    ]
    assert pick(cars, 100.0) == "b"


def test_a_usable_link_still_comes_first() -> None:
    cars = [
        Car("poor", stay=3600.0, link_quality=0.1, idle_since=0.0),
        Car("good", stay=10.0, link_quality=0.9, idle_since=5.0),
    ]
    assert pick(cars, 100.0) == "good"


def test_claiming_the_longest_stay_wins_no_more_than_the_share_of_cars_that_stay() -> None:
    # Ten cars that all stay long enough, one claiming a week: round robin all the same.
    cars = [Car(f"car-{i}", stay=1000.0, idle_since=float(i)) for i in range(10)]
    cars[3].stay = 7 * 86_400.0
    taken: dict[str, int] = {}
    for clock in range(10, 110):
        chosen = choose_car(cars, "onnxruntime", 0, stay_s=stay_of, estimate_s=100.0)
        assert chosen is not None
        taken[chosen.car_id] = taken.get(chosen.car_id, 0) + 1
        chosen.idle_since = clock
    assert set(taken.values()) == {10}


def test_a_car_that_leaves_checkpoints_every_quarter_of_its_stay() -> None:
    assert checkpoint_interval_s(5.0, 8.0) == 2.0
    assert checkpoint_interval_s(5.0, 100.0) == 5.0  # never longer than the task's own
    assert checkpoint_interval_s(5.0, 0.5) == MIN_CHECKPOINT_S
