"""What a car may claim: the documented range of every number in Hello, Telemetry and a
task's reports, and the closed set of reasons a car may give.

Everything a car says is a claim (decision 10). A number outside its range is a protocol
violation that names the field and closes that car's stream: a car that says its link
quality is 10⁹ or its GPU count 4·10⁹ is not confused, it is lying, and clamping would
let it keep the largest value it may claim. The one clamp is free GPU memory, which may
briefly exceed the total while a driver reports it (``clamped_free_memory``). A car's
failure or refusal reason outside the closed set becomes ``CarFailed``, and its free
text is bounded and stripped of control characters: both are shown, never parsed.

| field | range |
| --- | --- |
| hello.capabilities.gpu_count | 0..``MAX_GPU_COUNT`` (a gateway may allow fewer) |
| hello.capabilities.gpu_memory_mib | 0..``MAX_GPU_MEMORY_MIB`` (a gateway may allow less) |
| hello.capabilities.gpu_power_w | 0..``MAX_POWER_W``, finite |
| hello.capabilities.awake_base_w | 0..``MAX_POWER_W``, finite |
| hello.capabilities.charging_efficiency | 0 (the default) or ``MIN_CHARGING_EFFICIENCY``..1 |
| hello.policy.min_soc_percent, resume_soc_percent | 0..100 |
| hello.policy.daily_energy_wh | 0..``MAX_ENERGY_WH``, finite |
| hello.policy.max_gpu_temp_c | 0..``MAX_TEMP_C``, finite |
| hello.policy.utc_offset_minutes | -840..840 |
| hello.policy.time_zone | "" or an IANA zone the gateway knows, at most ``MAX_TIME_ZONE_CHARS`` |
| telemetry.state | a defined VehicleState |
| telemetry.consent | a defined Consent |
| telemetry.soc_percent | 0..100, finite |
| telemetry.gpu_temp_c | ``MIN_TEMP_C``..``MAX_TEMP_C``, finite |
| telemetry.free_gpu_memory_mib | 0..``MAX_GPU_MEMORY_MIB`` (then clamped to the car's total) |
| telemetry.link_quality | 0..1, finite |
| telemetry.energy_used_today_wh | 0..``MAX_ENERGY_WH``, finite |
| telemetry.expected_stay_s | 0 (unknown) ..``MAX_EXPECTED_STAY_S``, finite |
| done/failed.energy_wh | 0..``MAX_TASK_ENERGY_WH``, finite |
| done.seconds, progress.items_per_second | ≥ 0, finite |
"""

from __future__ import annotations

import math
import re
from typing import Final

from parkfleet.policy import check_time_zone
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.limits import ProtocolViolation, check_text

__all__ = [
    "CAR_REASONS",
    "MAX_CAR_TEXT_CHARS",
    "MAX_EXPECTED_STAY_S",
    "MAX_GPU_COUNT",
    "MAX_GPU_MEMORY_MIB",
    "MAX_TIME_ZONE_CHARS",
    "MIN_CHARGING_EFFICIENCY",
    "REASON_CAR_FAILED",
    "car_reason",
    "car_text",
    "check_hello_claims",
    "check_report_claims",
    "check_telemetry_claims",
    "clamped_free_memory",
]

MAX_GPU_COUNT: Final[int] = 16
MAX_GPU_MEMORY_MIB: Final[int] = 1024 * 1024  # 1 TiB per GPU: past any GPU made
MAX_POWER_W: Final[float] = 5_000.0
# No charger loses more than half: a smaller figure would multiply a task's energy.
MIN_CHARGING_EFFICIENCY: Final[float] = 0.5
MAX_ENERGY_WH: Final[float] = 200_000.0  # a day: more than a car's battery holds
MAX_TASK_ENERGY_WH: Final[float] = 50_000.0
MIN_TEMP_C: Final[float] = -60.0
MAX_TEMP_C: Final[float] = 200.0
MAX_CAR_TEXT_CHARS: Final[int] = 512
MAX_TIME_ZONE_CHARS: Final[int] = 64  # the longest IANA name has 32
# An owner's schedule repeats weekly: no next departure is further off than a week (and
# a longer claim would add nothing: placement only asks "long enough for this unit?").
MAX_EXPECTED_STAY_S: Final[float] = 7 * 86_400.0
_STATES: Final[frozenset[int]] = frozenset(pb.VehicleState.values())
_CONSENTS: Final[frozenset[int]] = frozenset(pb.Consent.values())

REASON_CAR_FAILED: Final[str] = "CarFailed"
# Every reason a car of this version gives (vehicle/, policy.py); anything else is
# CarFailed. A closed set keeps metric labels and Events bounded.
CAR_REASONS: Final[frozenset[str]] = frozenset(
    {
        # policy (parkfleet.policy)
        "Driving",
        "NotPluggedIn",
        "BatteryLow",
        "BlockedHours",
        "EnergyBudgetSpent",
        "GpuTooHot",
        "OwnerPaused",
        "OwnerWithdrawn",
        "NoTelemetry",
        # refusals (vehicle/link.py)
        "Busy",
        "UnsupportedRuntime",
        "UnsupportedModelSource",
        "InvalidOffer",
        "InsufficientGpuMemory",
        "Superseded",
        # failures (vehicle/link.py, vehicle/runner.py)
        "AgentStopping",
        "AgentError",
        "ModelHashMismatch",
        "ModelFetchFailed",
        "ModelLoadFailed",
        "InvalidInput",
        "InferenceError",
        "Cancelled",
        REASON_CAR_FAILED,
    }
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _number(value: float, field: str, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ProtocolViolation(f"{field} {value!r} is not in {low:g}..{high:g}")


def check_hello_claims(
    h: pb.Hello, max_gpu_count: int = MAX_GPU_COUNT, max_gpu_memory_mib: int = MAX_GPU_MEMORY_MIB
) -> None:
    """Checks the numbers of a Hello against their ranges (and a gateway's maxima), and
    that its policy's time zone is one the gateway knows.

    Raises:
        ProtocolViolation: A number is out of range or the zone unknown or overlong; the
            message names the field.
    """
    caps = h.capabilities
    _number(caps.gpu_count, "hello.capabilities.gpu_count", 0, min(max_gpu_count, MAX_GPU_COUNT))
    _number(
        caps.gpu_memory_mib,
        "hello.capabilities.gpu_memory_mib",
        0,
        min(max_gpu_memory_mib, MAX_GPU_MEMORY_MIB),
    )
    _number(caps.gpu_power_w, "hello.capabilities.gpu_power_w", 0, MAX_POWER_W)
    _number(caps.awake_base_w, "hello.capabilities.awake_base_w", 0, MAX_POWER_W)
    if caps.charging_efficiency != 0:
        _number(
            caps.charging_efficiency,
            "hello.capabilities.charging_efficiency",
            MIN_CHARGING_EFFICIENCY,
            1,
        )
    p = h.policy
    _number(p.min_soc_percent, "hello.policy.min_soc_percent", 0, 100)
    _number(p.resume_soc_percent, "hello.policy.resume_soc_percent", 0, 100)
    _number(p.daily_energy_wh, "hello.policy.daily_energy_wh", 0, MAX_ENERGY_WH)
    _number(p.max_gpu_temp_c, "hello.policy.max_gpu_temp_c", 0, MAX_TEMP_C)
    _number(p.utc_offset_minutes, "hello.policy.utc_offset_minutes", -840, 840)
    check_text(p.time_zone, "hello.policy.time_zone", MAX_TIME_ZONE_CHARS)
    try:
        check_time_zone(p.time_zone)
    except ValueError:
        raise ProtocolViolation(
            f"hello.policy.time_zone {p.time_zone!r} is not a known IANA time zone"
        ) from None


def check_telemetry_claims(t: pb.Telemetry) -> None:
    """Checks the numbers of a Telemetry message against their ranges.

    Raises:
        ProtocolViolation: A number is out of range; the message names the field.
    """
    if t.state not in _STATES:
        raise ProtocolViolation(f"telemetry.state {t.state} is not a VehicleState")
    if t.consent not in _CONSENTS:
        raise ProtocolViolation(f"telemetry.consent {t.consent} is not a Consent")
    _number(t.soc_percent, "telemetry.soc_percent", 0, 100)
    _number(t.gpu_temp_c, "telemetry.gpu_temp_c", MIN_TEMP_C, MAX_TEMP_C)
    _number(t.free_gpu_memory_mib, "telemetry.free_gpu_memory_mib", 0, MAX_GPU_MEMORY_MIB)
    _number(t.link_quality, "telemetry.link_quality", 0, 1)
    _number(t.energy_used_today_wh, "telemetry.energy_used_today_wh", 0, MAX_ENERGY_WH)
    _number(t.expected_stay_s, "telemetry.expected_stay_s", 0, MAX_EXPECTED_STAY_S)


def check_report_claims(kind: str, msg: pb.CarMessage) -> None:
    """Checks the numbers of a task report (done, failed, progress).

    Raises:
        ProtocolViolation: A number is out of range; the message names the field.
    """
    if kind == "done":
        _number(msg.done.energy_wh, "done.energy_wh", 0, MAX_TASK_ENERGY_WH)
        _number(msg.done.seconds, "done.seconds", 0, 1e9)
    elif kind == "failed":
        _number(msg.failed.energy_wh, "failed.energy_wh", 0, MAX_TASK_ENERGY_WH)
    elif kind == "progress":
        _number(msg.progress.items_per_second, "progress.items_per_second", 0, 1e12)


def clamped_free_memory(free_mib: int, total_mib: int) -> int:
    """Free GPU memory as placement may use it: never more than the car's total."""
    return min(free_mib, total_mib)


def car_reason(reason: str) -> str:
    """A car's reason as the gateway repeats it: one of ``CAR_REASONS``, else CarFailed."""
    return reason if reason in CAR_REASONS else REASON_CAR_FAILED


def car_text(text: str, limit: int = MAX_CAR_TEXT_CHARS) -> str:
    """A car's free text as the gateway repeats it: no control or direction characters,
    at most ``limit`` characters."""
    clean = _CONTROL.sub(" ", text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
