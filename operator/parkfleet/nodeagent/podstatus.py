"""A cell pod's ``status`` as the kubelet would write it: Pending, Running, terminated.

Pure: every time is passed in, so the same inputs give the same status.
"""

from __future__ import annotations

import datetime
from typing import Any

__all__ = [
    "CAR_ASSIGNED",
    "condition",
    "pending_status",
    "running_status",
    "terminated_status",
    "timestamp",
]

CAR_ASSIGNED = "parkfleet.io/CarAssigned"


def timestamp(now: datetime.datetime) -> str:
    """RFC 3339 in UTC, to the second, as Kubernetes writes it."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str, message: str, now: str) -> dict[str, str]:
    """One pod condition."""
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


def _container(name: str, image: str, state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }


def pending_status(now: str) -> dict[str, Any]:
    """Waiting for a car: ``Pending`` with ``CarAssigned=False``."""
    return {
        "phase": "Pending",
        "conditions": [condition(CAR_ASSIGNED, "False", "WaitingForCar", "waiting for a car", now)],
    }


def running_status(
    container: str, image: str, car: str, started_at: str, host_ip: str, now: str
) -> dict[str, Any]:
    """A car runs it: ``Running``, ready, its one container started at ``started_at``."""
    return {
        "phase": "Running",
        "startTime": started_at,
        "hostIP": host_ip,
        "conditions": [
            condition(CAR_ASSIGNED, "True", "CarAssigned", f"car {car}", now),
            condition("Initialized", "True", "", "", now),
            condition("ContainersReady", "True", "", "", now),
            condition("Ready", "True", "", "", now),
        ],
        "containerStatuses": [
            _container(container, image, {"running": {"startedAt": started_at}}, ready=True)
        ],
    }


def terminated_status(
    container: str,
    image: str,
    code: int,
    reason: str,
    message: str,
    now: str,
    started_at: str = "",
    *,
    conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Its one container terminated with ``code``: ``Succeeded`` for 0, else ``Failed``.

    Args:
        conditions: The pod's conditions; by default not ready (``PodCompleted``).
    """
    status: dict[str, Any] = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": conditions
        if conditions is not None
        else [
            condition("Ready", "False", "PodCompleted", "", now),
            condition("ContainersReady", "False", "PodCompleted", "", now),
        ],
        "containerStatuses": [
            _container(
                container,
                image,
                {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "message": message,
                        "startedAt": started_at or now,
                        "finishedAt": now,
                    }
                },
                ready=False,
            )
        ],
    }
    if code != 0:
        status["reason"] = reason
        status["message"] = message
    return status
