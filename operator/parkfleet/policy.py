"""Owner policy: when a car may take work, decided from its telemetry.

Pure logic, no I/O but the time zone database (``zoneinfo``). Both ends of the car link
use it: the gateway before it offers work, the agent before it accepts or continues it
(decision 6). The battery and the thermal limits have hysteresis so a car hovering around
a limit does not flap. Local time (blocked hours, the daily budget's day) is the owner's
IANA ``time_zone`` at each instant, summer time included, else a fixed UTC offset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from parkfleet.protocol import carlink_pb2 as pb

__all__ = [
    "REASON_BATTERY_LOW",
    "REASON_BLOCKED_HOURS",
    "REASON_DRIVING",
    "REASON_ENERGY_BUDGET_SPENT",
    "REASON_GPU_TOO_HOT",
    "REASON_NOT_PLUGGED_IN",
    "REASON_OWNER_PAUSED",
    "REASON_OWNER_WITHDRAWN",
    "THERMAL_RESUME_MARGIN_C",
    "Conditions",
    "Eligibility",
    "Policy",
    "Verdict",
    "check_time_zone",
    "local_hour",
    "owner_tz",
    "utc_offset_minutes_at",
]

REASON_DRIVING = "Driving"
REASON_NOT_PLUGGED_IN = "NotPluggedIn"
REASON_BATTERY_LOW = "BatteryLow"
REASON_BLOCKED_HOURS = "BlockedHours"
REASON_ENERGY_BUDGET_SPENT = "EnergyBudgetSpent"
REASON_GPU_TOO_HOT = "GpuTooHot"
# The owner's consent, set in the car's own settings (Telemetry.consent).
REASON_OWNER_PAUSED = "OwnerPaused"
REASON_OWNER_WITHDRAWN = "OwnerWithdrawn"

# After stopping at ``max_gpu_temp_c``, work starts again only this much cooler: a GPU that
# cools as soon as its task stops would otherwise take and drop work every period.
THERMAL_RESUME_MARGIN_C = 5.0

_DAY_MS = 86_400_000
# A car's clock is a claim: instants past datetime's years 1..9999 are read at its ends.
_MIN_ZONED_MS = -62_000_000_000_000
_MAX_ZONED_MS = 253_000_000_000_000


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    # Eligibility runs for every car every telemetry period: one lookup per zone, ever.
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        # ZoneInfo says KeyError, ValueError or IsADirectoryError depending on the name.
        raise ValueError(f"time_zone {name!r} is not a known IANA time zone") from e


def check_time_zone(name: str) -> None:
    """Checks that ``name`` is empty or a time zone this machine knows (``Europe/Berlin``).

    Raises:
        ValueError: An unknown zone; the message names ``time_zone`` and the value.
    """
    if name:
        _zone(name)


def owner_tz(time_zone: str = "", utc_offset_minutes: int = 0) -> tzinfo:
    """The owner's local time: the IANA zone when set, else the fixed UTC offset.

    Raises:
        ValueError: ``time_zone`` is not a known zone.
    """
    if time_zone:
        return _zone(time_zone)
    return timezone(timedelta(minutes=utc_offset_minutes))


def utc_offset_minutes_at(
    unix_time_ms: int, time_zone: str = "", utc_offset_minutes: int = 0
) -> int:
    """Local time's offset from UTC at an instant, in minutes.

    Args:
        unix_time_ms: The instant.
        time_zone: An IANA zone; when set it wins over ``utc_offset_minutes``, and its
            offset follows summer time.
        utc_offset_minutes: The fixed offset used when ``time_zone`` is empty.

    Raises:
        ValueError: ``time_zone`` is not a known zone.
    """
    if not time_zone:
        return utc_offset_minutes
    ms = min(max(unix_time_ms, _MIN_ZONED_MS), _MAX_ZONED_MS)
    at = datetime.fromtimestamp(ms / 1000.0, tz=_zone(time_zone))
    offset = at.utcoffset()
    return 0 if offset is None else int(offset.total_seconds()) // 60


def _min_nonzero(a: float, b: float) -> float:
    """The stricter of two limits where 0 means "no limit"."""
    if a <= 0:
        return b
    if b <= 0:
        return a
    return min(a, b)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a car's owner allows (possibly tightened by the pool's floor).

    Attributes:
        only_while_plugged_in: Work only while the car is charging.
        min_soc_percent: Stop below this state of charge.
        resume_soc_percent: After stopping for battery, start again only at or above
            this; the effective value is ``max(min_soc_percent, resume_soc_percent)``.
        blocked_hours: Local ``[start, end)`` hour windows with no work; a window with
            ``start > end`` wraps midnight, ``start == end`` is empty.
        daily_energy_wh: Energy budget per local day; 0 means unlimited.
        max_gpu_temp_c: No work at or above this GPU temperature; 0 means unlimited. After
            a stop for heat, work resumes at or below ``max_gpu_temp_c -
            THERMAL_RESUME_MARGIN_C``.
        utc_offset_minutes: The owner's fixed local time offset, for ``blocked_hours``
            and the daily budget's day, when ``time_zone`` is empty.
        time_zone: The owner's IANA time zone (``"Europe/Berlin"``); when set it wins over
            ``utc_offset_minutes`` and local time follows it, summer time included.

    Raises:
        ValueError: ``time_zone`` is not a known zone (``check_time_zone``).
    """

    only_while_plugged_in: bool = True
    min_soc_percent: float = 0.0
    resume_soc_percent: float = 0.0
    blocked_hours: tuple[tuple[int, int], ...] = ()
    daily_energy_wh: float = 0.0
    max_gpu_temp_c: float = 0.0
    utc_offset_minutes: int = 0
    time_zone: str = ""

    def __post_init__(self) -> None:
        check_time_zone(self.time_zone)

    def utc_offset_minutes_at(self, unix_time_ms: int) -> int:
        """The owner's offset from UTC at an instant, in minutes (see ``time_zone``)."""
        return utc_offset_minutes_at(unix_time_ms, self.time_zone, self.utc_offset_minutes)

    def local_hour(self, unix_time_ms: int) -> int:
        """The owner's local hour of day (0..23) at an instant."""
        return local_hour(unix_time_ms, self.utc_offset_minutes_at(unix_time_ms))

    def local_day(self, unix_time_ms: int) -> int:
        """The owner's local day at an instant, as days since 1970-01-01 (the budget's day)."""
        return (unix_time_ms + self.utc_offset_minutes_at(unix_time_ms) * 60_000) // _DAY_MS

    @property
    def effective_resume_soc_percent(self) -> float:
        """The state of charge at which work may start again after a battery stop."""
        return max(self.min_soc_percent, self.resume_soc_percent)

    @classmethod
    def from_proto(cls, msg: pb.OwnerPolicy) -> Policy:
        """Builds a policy from its wire form."""
        return cls(
            only_while_plugged_in=msg.only_while_plugged_in,
            min_soc_percent=float(msg.min_soc_percent),
            resume_soc_percent=float(msg.resume_soc_percent),
            blocked_hours=tuple((w.start_hour, w.end_hour) for w in msg.blocked_hours),
            daily_energy_wh=msg.daily_energy_wh,
            max_gpu_temp_c=msg.max_gpu_temp_c,
            utc_offset_minutes=msg.utc_offset_minutes,
            time_zone=msg.time_zone,
        )

    def to_proto(self) -> pb.OwnerPolicy:
        """The wire form (state-of-charge thresholds are rounded up to whole percent)."""
        return pb.OwnerPolicy(
            only_while_plugged_in=self.only_while_plugged_in,
            # Rounding up keeps the wire form at least as strict as the policy.
            min_soc_percent=_ceil_percent(self.min_soc_percent),
            resume_soc_percent=_ceil_percent(self.resume_soc_percent),
            blocked_hours=[pb.HourWindow(start_hour=s, end_hour=e) for s, e in self.blocked_hours],
            daily_energy_wh=self.daily_energy_wh,
            max_gpu_temp_c=self.max_gpu_temp_c,
            utc_offset_minutes=self.utc_offset_minutes,
            time_zone=self.time_zone,
        )

    def stricter(self, floor: Policy) -> Policy:
        """Combines this (owner) policy with a pool's floor; the result is never looser.

        Every limit takes the stricter of the two; blocked hours are the union. Local
        time stays the owner's, so the floor's windows are read in the owner's time.

        Args:
            floor: The pool's minimum policy.

        Returns:
            A policy at least as strict as both.
        """
        windows = list(self.blocked_hours)
        windows.extend(w for w in floor.blocked_hours if w not in windows)
        return Policy(
            only_while_plugged_in=self.only_while_plugged_in or floor.only_while_plugged_in,
            min_soc_percent=max(self.min_soc_percent, floor.min_soc_percent),
            resume_soc_percent=max(
                self.effective_resume_soc_percent, floor.effective_resume_soc_percent
            ),
            blocked_hours=tuple(windows),
            daily_energy_wh=_min_nonzero(self.daily_energy_wh, floor.daily_energy_wh),
            max_gpu_temp_c=_min_nonzero(self.max_gpu_temp_c, floor.max_gpu_temp_c),
            utc_offset_minutes=self.utc_offset_minutes,
            time_zone=self.time_zone,
        )

    def in_blocked_hours(self, unix_time_ms: int) -> bool:
        """Whether the given instant falls in one of the blocked windows (local time)."""
        if not self.blocked_hours:
            return False
        hour = self.local_hour(unix_time_ms)
        for start, end in self.blocked_hours:
            if start < end:
                if start <= hour < end:
                    return True
            elif start > end and (hour >= start or hour < end):
                return True
        return False


def _ceil_percent(value: float) -> int:
    whole = int(value)
    return max(0, whole + 1 if value > whole else whole)


def local_hour(unix_time_ms: int, utc_offset_minutes: int) -> int:
    """The hour of day (0..23) of ``unix_time_ms`` at the given UTC offset."""
    minutes = unix_time_ms // 60_000 + utc_offset_minutes
    return (minutes // 60) % 24


@dataclass(frozen=True, slots=True)
class Conditions:
    """A car's state as far as the policy cares, usually from its latest telemetry.

    ``consent`` is the owner's (``pb.Consent``); ``CONSENT_UNSPECIFIED`` means active.
    """

    parked: bool
    plugged_in: bool
    soc_percent: float
    gpu_temp_c: float
    energy_used_today_wh: float
    unix_time_ms: int
    consent: pb.Consent.ValueType = pb.CONSENT_ACTIVE

    @classmethod
    def from_telemetry(cls, t: pb.Telemetry) -> Conditions:
        """Reads the conditions out of a telemetry message."""
        return cls(
            parked=t.state == pb.PARKED,
            plugged_in=t.plugged_in,
            soc_percent=t.soc_percent,
            gpu_temp_c=t.gpu_temp_c,
            energy_used_today_wh=t.energy_used_today_wh,
            unix_time_ms=t.unix_time_ms,
            consent=t.consent or pb.CONSENT_ACTIVE,  # UNSPECIFIED: an older agent, active
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a car may work now, and if not, why.

    Attributes:
        eligible: True when the car may take or continue work.
        reason: "" when eligible, else a CamelCase word such as ``"BatteryLow"``.
        message: A human-readable explanation.
    """

    eligible: bool
    reason: str
    message: str


_ELIGIBLE = Verdict(True, "", "")


class Eligibility:
    """Decides eligibility for one car over time, with battery and thermal hysteresis.

    Once the state of charge drops below ``min_soc_percent`` the car stays ineligible
    until it reaches the effective resume threshold again; once the GPU reaches
    ``max_gpu_temp_c`` it stays ineligible until it has cooled by
    ``THERMAL_RESUME_MARGIN_C``.
    """

    __slots__ = ("_battery_low", "_too_hot", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._battery_low = False
        self._too_hot = False

    def update(self, c: Conditions) -> Verdict:
        """Takes new conditions and returns the verdict for them.

        Args:
            c: The car's current conditions.

        Returns:
            The verdict; reasons are checked in a fixed order (the owner's consent,
            driving, plug, battery, hours, energy, temperature) and the first that
            applies is reported.
        """
        p = self.policy
        # The battery state is tracked on every update, whatever else applies, so that
        # hysteresis holds even across a drive.
        if self._battery_low:
            if c.soc_percent >= p.effective_resume_soc_percent:
                self._battery_low = False
        elif c.soc_percent < p.min_soc_percent:
            self._battery_low = True
        if p.max_gpu_temp_c <= 0:
            self._too_hot = False
        elif self._too_hot:
            if c.gpu_temp_c <= p.max_gpu_temp_c - THERMAL_RESUME_MARGIN_C:
                self._too_hot = False
        elif c.gpu_temp_c >= p.max_gpu_temp_c:
            self._too_hot = True

        if c.consent == pb.CONSENT_WITHDRAWN:
            return Verdict(
                False, REASON_OWNER_WITHDRAWN, "the owner withdrew the car from the fleet"
            )
        if c.consent == pb.CONSENT_PAUSED:
            return Verdict(False, REASON_OWNER_PAUSED, "the owner paused work on the car")
        if not c.parked:
            return Verdict(False, REASON_DRIVING, "the car is not parked")
        if p.only_while_plugged_in and not c.plugged_in:
            return Verdict(
                False, REASON_NOT_PLUGGED_IN, "the owner allows work only while charging"
            )
        if self._battery_low:
            return Verdict(
                False,
                REASON_BATTERY_LOW,
                f"battery at {c.soc_percent:.1f}%: stopped below {p.min_soc_percent:g}%, "
                f"resumes at {p.effective_resume_soc_percent:g}%",
            )
        if p.in_blocked_hours(c.unix_time_ms):
            hour = p.local_hour(c.unix_time_ms)
            return Verdict(
                False, REASON_BLOCKED_HOURS, f"local hour {hour} is blocked by the owner"
            )
        if p.daily_energy_wh > 0 and c.energy_used_today_wh >= p.daily_energy_wh:
            return Verdict(
                False,
                REASON_ENERGY_BUDGET_SPENT,
                f"used {c.energy_used_today_wh:.1f} Wh of a {p.daily_energy_wh:g} Wh daily budget",
            )
        if self._too_hot:
            return Verdict(
                False,
                REASON_GPU_TOO_HOT,
                f"GPU at {c.gpu_temp_c:.1f} C: stopped at {p.max_gpu_temp_c:g} C, resumes at "
                f"{p.max_gpu_temp_c - THERMAL_RESUME_MARGIN_C:g} C",
            )
        return _ELIGIBLE
