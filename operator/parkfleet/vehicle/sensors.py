"""Where a car's telemetry comes from.

The agent only ever reads a ``Sensors`` object. The daemon uses ``StaticSensors`` (from the
command line) or ``FileSensors`` (a JSON/YAML file re-read when it changes, handy for a
real car's side process or a test); the simulator drives ``MutableSensors`` from its traces.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

__all__ = [
    "FileSensors",
    "MutableSensors",
    "SensorReading",
    "Sensors",
    "StaticSensors",
    "parse_sensor_spec",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensorReading:
    """One look at the car's state.

    Attributes:
        parked: True when parked, False when driving.
        plugged_in: True while connected to a charger.
        soc_percent: Battery state of charge, 0..100.
        gpu_temp_c: GPU temperature.
        free_gpu_memory_mib: GPU memory free for tasks.
        link_quality: 0..1, how good the network link is.
        unix_time_ms: The car's clock (the simulator's clock runs faster).
        energy_used_today_wh: Energy the car already spent on work today outside this agent.
        expected_stay_s: Seconds the car expects to stay parked from now (0 = unknown):
            the owner's schedule (``vehicle/departures.py``) or the simulator's trace.
    """

    parked: bool = True
    plugged_in: bool = True
    soc_percent: float = 80.0
    gpu_temp_c: float = 40.0
    free_gpu_memory_mib: int = 8192
    link_quality: float = 1.0
    unix_time_ms: int = 0
    energy_used_today_wh: float = 0.0
    expected_stay_s: float = 0.0


class Sensors(Protocol):
    """A source of readings."""

    def read(self) -> SensorReading:
        """Returns the current reading (cheap, non-blocking)."""
        ...


def _now_ms() -> int:
    return int(time.time() * 1000)


_FIELDS = {
    "parked": bool,
    "plugged_in": bool,
    "soc_percent": float,
    "gpu_temp_c": float,
    "free_gpu_memory_mib": int,
    "link_quality": float,
    "energy_used_today_wh": float,
    "expected_stay_s": float,
}


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")  # a YAML file's keys may be numbers
        if key == "state":
            out["parked"] = str(value).lower() == "parked"
            continue
        if key not in _FIELDS:
            raise ValueError(f"unknown sensor field {key!r}")
        kind = _FIELDS[key]
        if kind is bool and isinstance(value, str):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        else:
            out[key] = kind(value)
    return out


def parse_sensor_spec(spec: str) -> SensorReading:
    """Parses ``"plugged_in=false,soc_percent=55"`` style overrides of the default reading.

    Args:
        spec: Comma-separated ``key=value`` pairs (empty = defaults).

    Returns:
        The reading with those fields set.

    Raises:
        ValueError: On an unknown key or a malformed pair.
    """
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ValueError(f"sensor override {part!r} is not key=value")
        key, value = part.split("=", 1)
        values[key.strip()] = value.strip()
    return replace(SensorReading(), **_coerce(values))


class StaticSensors:
    """A fixed reading with the wall clock's time."""

    def __init__(self, reading: SensorReading | None = None) -> None:
        self._reading = reading or SensorReading()

    def read(self) -> SensorReading:
        """Returns the fixed reading stamped with the current time."""
        return replace(self._reading, unix_time_ms=_now_ms())


class MutableSensors:
    """A reading that code (a test, a benchmark) changes while the agent runs."""

    def __init__(self, reading: SensorReading | None = None) -> None:
        self.reading = reading or SensorReading()

    def set(self, **changes: Any) -> None:
        """Changes some fields of the reading."""
        self.reading = replace(self.reading, **changes)

    def read(self) -> SensorReading:
        """Returns the current reading stamped with the current time."""
        return replace(self.reading, unix_time_ms=_now_ms())


class FileSensors:
    """A JSON or YAML mapping of reading fields, re-read whenever the file changes.

    A missing or half-written file keeps the last good reading.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._reading = SensorReading()
        self._last_error = ""

    def read(self) -> SensorReading:
        """Returns the file's reading stamped with the current time."""
        try:
            stat = self._path.stat()
            if stat.st_mtime_ns != self._mtime_ns:
                text = self._path.read_text()
                data = json.loads(text) if self._path.suffix == ".json" else yaml.safe_load(text)
                self._reading = replace(SensorReading(), **_coerce(dict(data or {})))
                self._mtime_ns = stat.st_mtime_ns
                self._last_error = ""
        except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
            # Keep the last good reading: a sensor hiccup is not a reason to crash.
            if str(e) != self._last_error:  # said once, not every telemetry period
                log.warning("sensors file %s: %s; keeping the last reading", self._path, e)
                self._last_error = str(e)
        return replace(self._reading, unix_time_ms=_now_ms())
