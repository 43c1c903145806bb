"""FleetPool: which cars form a pool, how they are cut into cells, and the pool's floor.

The CRD (``crds/fleetpools.parkfleet.io.yaml``) validates; this model only reads an
already-valid object and applies the schema's defaults for fields that were absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parkfleet.api.labelselector import LabelSelector, namespace_labels
from parkfleet.contract import (
    DEFAULT_POOL_CAR_WAIT_S,
    DEFAULT_SPOT_CHECK_FRACTION,
    cell_id,
    node_name,
)
from parkfleet.policy import Policy

__all__ = [
    "FLEET_TAINT_KEY",
    "GROUP",
    "LABEL_CELL",
    "LABEL_POOL",
    "VERSION",
    "FleetPoolSpec",
    "NodeTaint",
    "node_name",
]

GROUP = "parkfleet.io"
VERSION = "v1alpha1"
LABEL_POOL = "parkfleet.io/pool"
LABEL_CELL = "parkfleet.io/cell"
FLEET_TAINT_KEY = "parkfleet.io/fleet"


@dataclass(frozen=True)
class NodeTaint:
    """A taint the pool's Nodes carry."""

    key: str
    effect: str
    value: str = ""

    def to_k8s(self) -> dict[str, str]:
        """The Node ``spec.taints[]`` entry."""
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class FleetPoolSpec:
    """A FleetPool's spec, defaults applied.

    Attributes:
        name: The pool's name (cluster-scoped).
        match_attributes: Certificate attributes a car must carry to belong.
        cell_size: At most this many cars per cell.
        cells: Number of cells (virtual Nodes).
        runtimes: Runtimes pods may ask for.
        floor: The pool's policy floor.
        labels: Extra Node labels.
        taints: Extra Node taints (besides the fleet taint).
        shards: Gateway shards the cells are spread over.
        car_wait_s: How long a task may wait for an eligible car (``gateway.graceSeconds``).
        spot_check_fraction: Single-copy units also run on a second car of another owner
            and compared (``gateway.spotCheckFraction``; a job may override it).
        namespace_selector: The Namespaces whose pods and InferenceJobs may use the pool
            (``spec.namespaceSelector``); None (absent): every namespace.
    """

    name: str
    match_attributes: Mapping[str, str] = field(default_factory=dict)
    cell_size: int = 1
    cells: int = 1
    runtimes: tuple[str, ...] = ("onnxruntime",)
    floor: Policy = field(default_factory=Policy)
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[NodeTaint, ...] = ()
    shards: int = 1
    car_wait_s: float = DEFAULT_POOL_CAR_WAIT_S
    spot_check_fraction: float = DEFAULT_SPOT_CHECK_FRACTION
    namespace_selector: LabelSelector | None = None

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> FleetPoolSpec:
        """Reads a FleetPool object (as a dict from the API)."""
        spec: Mapping[str, Any] = obj.get("spec") or {}
        floor: Mapping[str, Any] = spec.get("policyFloor") or {}
        template: Mapping[str, Any] = spec.get("nodeTemplate") or {}
        gateway: Mapping[str, Any] = spec.get("gateway") or {}
        selector: Mapping[str, Any] = spec.get("selector") or {}
        namespaces: Mapping[str, Any] | None = spec.get("namespaceSelector")
        return cls(
            name=str(obj["metadata"]["name"]),
            match_attributes=dict(selector.get("matchAttributes") or {}),
            cell_size=int(spec.get("cellSize", 1)),
            cells=int(spec.get("cells", 1)),
            runtimes=tuple(spec.get("runtimes") or ("onnxruntime",)),
            floor=Policy(
                only_while_plugged_in=bool(floor.get("onlyWhilePluggedIn", True)),
                min_soc_percent=float(floor.get("minBatteryPercent", 0)),
                resume_soc_percent=float(floor.get("resumeBatteryPercent", 0)),
                blocked_hours=tuple(
                    (int(w["start"]), int(w["end"])) for w in floor.get("blockedHours") or ()
                ),
                daily_energy_wh=float(floor.get("dailyEnergyWh", 0)),
                max_gpu_temp_c=float(floor.get("maxGpuTempC", 0)),
            ),
            labels=dict(template.get("labels") or {}),
            taints=tuple(
                NodeTaint(key=t["key"], effect=t["effect"], value=t.get("value", ""))
                for t in template.get("taints") or ()
            ),
            shards=int(gateway.get("shards", 1)),
            car_wait_s=float(gateway.get("graceSeconds", DEFAULT_POOL_CAR_WAIT_S)),
            spot_check_fraction=float(
                gateway.get("spotCheckFraction", DEFAULT_SPOT_CHECK_FRACTION)
            ),
            namespace_selector=None if namespaces is None else LabelSelector.from_k8s(namespaces),
        )

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a car with these certificate attributes belongs to the pool."""
        return all(attributes.get(k) == v for k, v in self.match_attributes.items())

    def namespace_refusal(self, namespace: str, labels: Mapping[str, str] | None) -> str | None:
        """Why the pool refuses work from ``namespace`` (its labels; None: no such
        Namespace), or None when its ``spec.namespaceSelector`` allows it (or it has none)."""
        sel = self.namespace_selector
        if sel is None or (labels is not None and sel.matches(namespace_labels(namespace, labels))):
            return None
        missing = "; no such namespace" if labels is None else ""
        return (
            f'FleetPool "{self.name}" does not allow namespace "{namespace}" '
            f"(its spec.namespaceSelector: {sel}{missing})"
        )

    def cell_ids(self) -> list[str]:
        """The pool's cells, ``<pool>-0`` .. ``<pool>-<cells-1>``."""
        return [cell_id(self.name, i) for i in range(self.cells)]
