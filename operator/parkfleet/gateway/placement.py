"""Placement: which car of a cell takes a task. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Final, Literal, Protocol, TypeVar

__all__ = [
    "FITS",
    "GOOD_LINK",
    "MIN_CHECKPOINT_S",
    "STAY_MARGIN",
    "CarView",
    "Fit",
    "checkpoint_interval_s",
    "choose_car",
    "fits",
    "stay_fit",
]

GOOD_LINK = 0.5  # a link at least this good moves a task's inputs and results well enough
# A car "stays long enough" when its claimed stay covers the estimate by this much: the
# estimate is a mean over cars, and a unit also waits for its model and inputs.
STAY_MARGIN: Final[float] = 1.25
# A car that will leave before its unit ends checkpoints every quarter of its stay, but
# never more often than this (each checkpoint is a message and a result flush).
MIN_CHECKPOINT_S: Final[float] = 1.0

# How a car's claimed stay compares with a task's estimated run time, best first:
# known to stay long enough, unknown (no claim, no estimate, or a car whose claims are
# disregarded), known to leave before the task ends.
Fit = Literal["stays", "unknown", "leaves"]
FITS: Final[tuple[Fit, ...]] = ("stays", "unknown", "leaves")


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


def stay_fit(stay_s: float | None, estimate_s: float | None) -> Fit:
    """Whether a car that expects to stay ``stay_s`` more seconds (None: unknown) will
    see a task of ``estimate_s`` estimated seconds (None: unknown) through."""
    if stay_s is None or estimate_s is None:
        return "unknown"
    return "stays" if stay_s >= estimate_s * STAY_MARGIN else "leaves"


def checkpoint_interval_s(default_s: float, stay_s: float) -> float:
    """The checkpoint interval for a car that leaves before its task ends: a quarter of
    its remaining stay (at least ``MIN_CHECKPOINT_S``), never longer than the task's own,
    so that its departure costs little rework."""
    return max(MIN_CHECKPOINT_S, min(default_s, stay_s / 4.0))


def choose_car(
    candidates: Iterable[C],
    runtime: str,
    gpu_memory_mib: int,
    exclude: Collection[str] = (),
    exclude_owners: Collection[str] = (),
    stay_s: Callable[[C], float | None] | None = None,
    estimate_s: float | None = None,
) -> C | None:
    """Chooses the car for a task among a cell's eligible, idle cars.

    A car's claims count only coarsely, so that none lets it take more than its share:
    a usable link (``link_quality`` ≥ ``GOOD_LINK``) beats a poor one; then, with
    ``stay_s``, cars known to stay long enough for the task's estimated run time come
    first, cars whose stay or the task's estimate is unknown next, cars known to leave
    before it ends last (``stay_fit``); among cars alike in that the one idle longest
    goes first (round robin: a car that just finished a task waits behind every car that
    has been idle longer). A claimed stay never ranks cars within a class but the last:
    when every car will leave before the task ends, the one that stays longest goes
    first (it gets the most done before it leaves). Ties go to the smallest car id, so
    the choice is deterministic.

    Args:
        candidates: Eligible, idle cars of the task's cell.
        runtime: The runtime the task needs.
        gpu_memory_mib: GPU memory the task needs.
        exclude: Car ids not to choose (e.g. cars that refused this task).
        exclude_owners: Owners whose cars not to choose (those that hold a copy of the
            same unit: one owner's certificates are one voter).
        stay_s: Seconds each car expects to stay (None: unknown or disregarded); None:
            departures are not considered (departure-blind placement).
        estimate_s: The task's estimated remaining run time (None: unknown).

    Returns:
        The chosen car, or None when none fits.
    """
    best: C | None = None
    best_key: tuple[bool, int, float, float, str] | None = None
    for car in candidates:
        if car.car_id in exclude or not fits(car, runtime, gpu_memory_mib):
            continue
        if exclude_owners and car.owner in exclude_owners:
            continue
        fit_rank, longest = 1, 0.0
        if stay_s is not None:
            stay = stay_s(car)
            fit = stay_fit(stay, estimate_s)
            fit_rank = FITS.index(fit)
            if fit == "leaves" and stay is not None:
                longest = -stay
        # Smaller is better: a usable link first, then the fit, then the longest idle
        # (among cars that all leave too soon: the longest stay), then the id.
        key = (car.link_quality < GOOD_LINK, fit_rank, longest, car.idle_since, car.car_id)
        if best_key is None or key < best_key:
            best, best_key = car, key
    return best
