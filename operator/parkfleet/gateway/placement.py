"""Placement: which car of a cell takes a task. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol, TypeVar

__all__ = ["CarView", "choose_car", "fits"]


class CarView(Protocol):
    """What placement needs to know about a car (the registry's car state has it)."""

    @property
    def car_id(self) -> str: ...
    @property
    def runtimes(self) -> frozenset[str]: ...
    @property
    def gpu_memory_mib(self) -> int: ...
    @property
    def free_gpu_memory_mib(self) -> int: ...
    @property
    def soc_percent(self) -> float: ...
    @property
    def link_quality(self) -> float: ...


C = TypeVar("C", bound=CarView)


def fits(car: CarView, runtime: str, gpu_memory_mib: int) -> bool:
    """Whether the car can run a task of this runtime and GPU memory at all.

    Free memory from telemetry counts when the car reports it (non-zero); otherwise
    the total from its capabilities.
    """
    if runtime not in car.runtimes:
        return False
    memory = car.free_gpu_memory_mib or car.gpu_memory_mib
    return gpu_memory_mib <= memory


def choose_car(
    candidates: Iterable[C],
    runtime: str,
    gpu_memory_mib: int,
    exclude: Collection[str] = (),
) -> C | None:
    """Chooses the car for a task among a cell's eligible, idle cars.

    Prefers the best link (inputs and results travel over it), then the fullest
    battery (the car least likely to hit its owner's threshold); ties go to the
    smallest car id, so the choice is deterministic.

    Args:
        candidates: Eligible, idle cars of the task's cell.
        runtime: The runtime the task needs.
        gpu_memory_mib: GPU memory the task needs.
        exclude: Car ids not to choose (e.g. cars that refused this task).

    Returns:
        The chosen car, or None when none fits.
    """
    best: C | None = None
    best_key: tuple[float, float, str] | None = None
    for car in candidates:
        if car.car_id in exclude or not fits(car, runtime, gpu_memory_mib):
            continue
        key = (car.link_quality, car.soc_percent, car.car_id)
        if (
            best_key is None
            or key[:2] > best_key[:2]
            or (key[:2] == best_key[:2] and key[2] < best_key[2])
        ):
            best, best_key = car, key
    return best
