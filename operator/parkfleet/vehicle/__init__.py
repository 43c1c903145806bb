"""The vehicle agent: the car's end of the car link (``parkfleet agent``)."""

from parkfleet.vehicle.compute import (
    Compute,
    InferenceFailed,
    ModelledCompute,
    ModelLoadError,
    ModelSession,
    OrtCompute,
)
from parkfleet.vehicle.link import Agent, AgentConfig, Credentials, GaveUp, LinkRefused, Withdrawn
from parkfleet.vehicle.modelcache import ModelCache, ModelFetchError, ModelHashMismatch
from parkfleet.vehicle.sensors import (
    FileSensors,
    MutableSensors,
    SensorReading,
    Sensors,
    StaticSensors,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "Compute",
    "Credentials",
    "FileSensors",
    "GaveUp",
    "InferenceFailed",
    "LinkRefused",
    "ModelCache",
    "ModelFetchError",
    "ModelHashMismatch",
    "ModelLoadError",
    "ModelSession",
    "ModelledCompute",
    "MutableSensors",
    "OrtCompute",
    "SensorReading",
    "Sensors",
    "StaticSensors",
    "Withdrawn",
]
