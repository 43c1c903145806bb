"""What reaches a pod's lifecycle core (events) and what it asks for (effects).

Plain, frozen data: ``lifecycle.step`` turns one event into effects, which the shell
(``pods.py``) carries out in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "Accepted",
    "Cancel",
    "CloseLog",
    "CountEnded",
    "DeletePod",
    "DeletionRequested",
    "Effect",
    "Event",
    "Failed",
    "Gone",
    "KeptUnchecked",
    "Log",
    "Logged",
    "Lost",
    "Moved",
    "ObserveStart",
    "Outputs",
    "PatchStatus",
    "PendingDue",
    "PostEvent",
    "PromoteResult",
    "Release",
    "SchedulePendingCheck",
    "Stopped",
    "Submit",
    "SubmitFailed",
    "Succeeded",
    "Verdict",
]

Outputs = Mapping[str, npt.NDArray[np.generic]]


# ---- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingDue:
    """``PENDING_AFTER_S`` passed since the pod was submitted."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A car took the copy ``task_id`` (``trusted``: the car has a long clean record)."""

    task_id: str
    car: str
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class Moved:
    """The copy left ``from_car``; ``car`` resumes it at item ``checkpoint``."""

    task_id: str
    from_car: str
    car: str
    checkpoint: int


@dataclass(frozen=True, slots=True)
class Lost:
    """The copy's car left (``reason``); it waits for another car from ``checkpoint``."""

    task_id: str
    car: str
    reason: str
    checkpoint: int


@dataclass(frozen=True, slots=True)
class Logged:
    """The car sent log lines about the copy."""

    task_id: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Succeeded:
    """Every result of the copy reached its sink.

    Attributes:
        outputs: The copy's results when they are to be compared (copies ≥ 2).
    """

    task_id: str
    items: int
    energy_wh: float = 0.0
    energy_modelled: bool = False
    outputs: Outputs | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Failed:
    """The gateway gave up on the copy (``reason`` is the gateway's)."""

    task_id: str
    reason: str
    message: str
    energy_wh: float = 0.0
    energy_modelled: bool = False


@dataclass(frozen=True, slots=True)
class Stopped:
    """The copy was cancelled (by us)."""

    task_id: str
    energy_wh: float = 0.0
    energy_modelled: bool = False


@dataclass(frozen=True, slots=True)
class SubmitFailed:
    """The gateway refused the copy's task spec."""

    task_id: str
    message: str


@dataclass(frozen=True, slots=True)
class DeletionRequested:
    """The pod has a ``deletionTimestamp`` (``kubectl delete``, an eviction, a drain)."""


@dataclass(frozen=True, slots=True)
class Gone:
    """The pod object no longer exists."""


Event = (
    PendingDue
    | Accepted
    | Moved
    | Lost
    | Logged
    | Succeeded
    | Failed
    | Stopped
    | SubmitFailed
    | DeletionRequested
    | Gone
)


# ---- effects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Submit the copy ``task_id`` (``group``: the copies' common group, or ""), over
    ``items`` (``[start, end)``; None: the pod's items)."""

    task_id: str
    group: str = ""
    items: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the copy ``task_id``."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    """Tell the gateway the ended copy ``task_id`` is taken care of."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Tell the gateway whether the results of copy ``task_id`` agreed with the kept
    result (before the copy is released): its cars' reputation."""

    task_id: str
    agreed: bool


@dataclass(frozen=True, slots=True)
class KeptUnchecked:
    """The unit's result was kept as one car set delivered it, compared with nothing
    (one copy, or a spot check dropped or skipped): should one of ``cars`` be
    quarantined, the unit is run again elsewhere."""

    cars: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PatchStatus:
    """Write the pod's ``status`` (a final one when ``final``)."""

    status: Mapping[str, object]
    final: bool = False


@dataclass(frozen=True, slots=True)
class PostEvent:
    """Post an Event about the pod."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True, slots=True)
class Log:
    """Add lines to the pod's log (``kubectl logs``)."""

    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CloseLog:
    """The pod's log is complete."""


@dataclass(frozen=True, slots=True)
class PromoteResult:
    """Make the results of copy ``task_id`` the unit's result (before it is reported)."""

    task_id: str


@dataclass(frozen=True, slots=True)
class CountEnded:
    """Count the pod's end (metrics)."""

    phase: str
    reason: str
    energy_wh: float


@dataclass(frozen=True, slots=True)
class ObserveStart:
    """Observe the time from the pod's creation until a car took it."""

    seconds: float


@dataclass(frozen=True, slots=True)
class SchedulePendingCheck:
    """Deliver :class:`PendingDue` after ``after_s`` seconds."""

    after_s: float


@dataclass(frozen=True, slots=True)
class DeletePod:
    """Remove the pod object (its containers have stopped), as the kubelet does."""


Effect = (
    Submit
    | Cancel
    | Release
    | Verdict
    | KeptUnchecked
    | PatchStatus
    | PostEvent
    | Log
    | CloseLog
    | PromoteResult
    | CountEnded
    | ObserveStart
    | SchedulePendingCheck
    | DeletePod
)
