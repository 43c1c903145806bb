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


def test_fits_checks_runtime_and_memory() -> None:
    assert fits(Car("a"), "onnxruntime", 8192)
    assert not fits(Car("a"), "onnxruntime", 8193)
    assert not fits(Car("a"), "tensorrt", 0)
    # Free memory from telemetry, when reported, is what counts.
    assert not fits(Car("a", free_gpu_memory_mib=1000), "onnxruntime", 2000)


def test_choose_prefers_link_then_battery_then_id() -> None:
    cars = [
        Car("c", link_quality=0.5, soc_percent=99),
        Car("b", link_quality=0.9, soc_percent=60),
        Car("a", link_quality=0.9, soc_percent=60),
        Car("d", link_quality=0.9, soc_percent=50),
    ]
    chosen = choose_car(cars, "onnxruntime", 0)
    assert chosen is not None
    assert chosen.car_id == "a"
    chosen = choose_car(cars, "onnxruntime", 0, exclude={"a"})
    assert chosen is not None
    assert chosen.car_id == "b"


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
