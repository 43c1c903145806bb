"""Placement: which car of a cell takes a task. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol, TypeVar

__all__ = ["GOOD_LINK", "CarView", "choose_car", "fits"]

GOOD_LINK = 0.5  # a link at least this good moves a task's inputs and results well enough


class CarView(Protocol):
    """What placement needs to know about a car (the registry's car state has it)."""

    @property
    def car_id(self) -> str: ...
    @property
    def owner(self) -> str: ...
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
    @property
    def idle_since(self) -> float: ...


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
    exclude_owners: Collection[str] = (),
) -> C | None:
    """Chooses the car for a task among a cell's eligible, idle cars.

    A car's claims count only coarsely, so that none lets it take more than its share:
    a usable link (``link_quality`` ≥ ``GOOD_LINK``) beats a poor one, and among cars
    alike in that the one idle longest goes first (round robin: a car that just finished
    a task waits behind every car that has been idle longer). Ties go to the smallest
    car id, so the choice is deterministic.

    Args:
        candidates: Eligible, idle cars of the task's cell.
        runtime: The runtime the task needs.
        gpu_memory_mib: GPU memory the task needs.
        exclude: Car ids not to choose (e.g. cars that refused this task).
        exclude_owners: Owners whose cars not to choose (those that hold a copy of the
            same unit: one owner's certificates are one voter).

    Returns:
        The chosen car, or None when none fits.
    """
    best: C | None = None
    best_key: tuple[bool, float, str] | None = None
    for car in candidates:
        if car.car_id in exclude or not fits(car, runtime, gpu_memory_mib):
            continue
        if exclude_owners and car.owner in exclude_owners:
            continue
        # Smaller is better: a usable link first, then the longest idle, then the id.
        key = (car.link_quality < GOOD_LINK, car.idle_since, car.car_id)
        if best_key is None or key < best_key:
            best, best_key = car, key
    return best
