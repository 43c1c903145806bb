"""Manifests the benchmarks apply (imported by the bench scripts run from this folder)."""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["pool_doc"]


def pool_doc(
    name: str, cell_size: int, cells: int, grace_s: int = 60, runtimes: Sequence[str] = ()
) -> str:
    """A FleetPool of the cars whose certificate says ``pool=<name>`` (lenient owners)."""
    spec: dict[str, object] = {
        "selector": {"matchAttributes": {"pool": name}},
        "cellSize": cell_size,
        "cells": cells,
    }
    if runtimes:
        spec["runtimes"] = list(runtimes)
    spec["gateway"] = {"graceSeconds": grace_s}
    return json.dumps(
        {
            "apiVersion": "parkfleet.io/v1alpha1",
            "kind": "FleetPool",
            "metadata": {"name": name},
            "spec": spec,
        }
    )
