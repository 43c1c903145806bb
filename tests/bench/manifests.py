"""Manifests the benchmarks apply (imported by the bench scripts run from this folder)."""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["pool_doc"]


def pool_doc(
    name: str,
    cell_size: int,
    cells: int,
    grace_s: int = 60,
    runtimes: Sequence[str] = (),
    spot_check: float | None = None,
) -> str:
    """A FleetPool of the cars whose certificate says ``pool=<name>`` (lenient owners);
    ``spot_check``: its spot-check fraction (None: the CRD's default)."""
    spec: dict[str, object] = {
        "selector": {"matchAttributes": {"pool": name}},
        "cellSize": cell_size,
        "cells": cells,
    }
    if runtimes:
        spec["runtimes"] = list(runtimes)
    spec["gateway"] = {"graceSeconds": grace_s}
    if spot_check is not None:
        spec["gateway"]["spotCheckFraction"] = spot_check
    return json.dumps(
        {
            "apiVersion": "parkfleet.io/v1alpha1",
            "kind": "FleetPool",
            "metadata": {"name": name},
            "spec": spec,
        }
    )
