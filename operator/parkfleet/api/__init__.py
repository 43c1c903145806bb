"""The parkfleet.io/v1alpha1 API as typed models (the CRDs in ``crds/`` are the schema)."""

from parkfleet.api.fleetpool import (
    FLEET_TAINT_KEY,
    GROUP,
    LABEL_CELL,
    LABEL_POOL,
    VERSION,
    FleetPoolSpec,
    NodeTaint,
    node_name,
)
from parkfleet.api.inferencejob import InferenceJobSpec, Unit
from parkfleet.api.labelselector import LabelSelector

__all__ = [
    "FLEET_TAINT_KEY",
    "GROUP",
    "LABEL_CELL",
    "LABEL_POOL",
    "VERSION",
    "FleetPoolSpec",
    "InferenceJobSpec",
    "LabelSelector",
    "NodeTaint",
    "Unit",
    "node_name",
]
