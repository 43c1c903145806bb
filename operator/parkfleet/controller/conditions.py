"""Status conditions: ``lastTransitionTime`` moves only when a condition's status does."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

__all__ = ["merge_conditions"]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: list[Mapping[str, Any]] | None, new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Keeps ``lastTransitionTime`` unless a condition's status changed."""
    before = {c.get("type"): c for c in old or ()}
    out = []
    for cond in new:
        prev = before.get(cond["type"])
        if prev is not None and prev.get("status") == cond["status"]:
            cond["lastTransitionTime"] = prev.get("lastTransitionTime") or _now()
        else:
            cond["lastTransitionTime"] = _now()
        out.append(cond)
    return out
