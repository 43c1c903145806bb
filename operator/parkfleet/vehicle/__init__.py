"""The vehicle agent: the car's end of the car link (``parkfleet agent``)."""

from parkfleet.vehicle.compute import Compute, ModelledCompute, ModelSession, OrtCompute
from parkfleet.vehicle.link import Agent, AgentConfig, Credentials, GaveUp, LinkRefused
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
    "LinkRefused",
    "ModelCache",
    "ModelFetchError",
    "ModelHashMismatch",
    "ModelSession",
    "ModelledCompute",
    "MutableSensors",
    "OrtCompute",
    "SensorReading",
    "Sensors",
    "StaticSensors",
]
