"""Energy: measured when a power reader exists, modelled (and marked so) otherwise."""

from __future__ import annotations

import pytest

from parkfleet.energymodel import CarPower
from parkfleet.policy import Policy
from parkfleet.vehicle.energy import DailyEnergy, EnergyMeter


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_modelled_from_the_awake_car_at_the_socket() -> None:
    clock = FakeClock()
    # 60 W of GPU and 240 W of the rest of the car awake, charged at 80 %: 375 W.
    power = CarPower(gpu_power_w=60.0, awake_base_w=240.0, charging_efficiency=0.8)
    meter = EnergyMeter(power, clock=clock)
    clock.t += 3600.0
    reading = meter.reading()
    assert reading.modelled
    assert reading.wh == pytest.approx(375.0)
    assert reading.seconds == pytest.approx(3600.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu_power_w", -1.0),
        ("awake_base_w", float("nan")),
        ("charging_efficiency", 0.4),
        ("charging_efficiency", 1.5),
    ],
)
def test_a_power_model_out_of_range_is_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CarPower(**{field: value})


def test_measured_integrates_samples() -> None:
    clock = FakeClock()
    watts = [100.0]
    # Measured at the car; half of the socket's energy reaches it.
    power = CarPower(gpu_power_w=60.0, charging_efficiency=0.5)
    meter = EnergyMeter(power, reader=lambda: watts[0], clock=clock)
    clock.t += 1800.0
    watts[0] = 300.0
    meter.sample()  # trapezoid: (100 + 300) / 2 W for half an hour = 100 Wh
    clock.t += 1800.0
    reading = meter.reading()  # 300 W for half an hour = 150 Wh
    assert not reading.modelled
    assert reading.wh == pytest.approx(500.0)  # 250 Wh at the car, twice that at the socket


@pytest.mark.parametrize(("error", "traceback"), [(OSError, False), (AttributeError, True)])
def test_a_failing_sensor_falls_back_to_the_model_and_says_so_once(
    error: type[Exception], traceback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()

    def broken() -> float | None:
        raise error("sensor gone")

    power = CarPower(gpu_power_w=12.0, awake_base_w=24.0, charging_efficiency=1.0)
    meter = EnergyMeter(power, reader=broken, clock=clock)
    clock.t += 100.0
    meter.sample()
    reading = meter.reading()
    assert reading.modelled
    assert reading.wh == pytest.approx(1.0)
    (said,) = [r for r in caplog.records if "power sensor failed" in r.getMessage()]
    assert bool(said.exc_info) == traceback  # a bug (not an I/O error) comes in full


def test_daily_energy_resets_at_local_midnight() -> None:
    day = 86_400_000
    daily = DailyEnergy(Policy(utc_offset_minutes=60).local_day)
    # 22:30 UTC is 23:30 local; 23:30 UTC is already the next local day.
    daily.add(10.0, day + 22 * 3_600_000 + 1_800_000)
    assert daily.today(day + 22 * 3_600_000 + 1_900_000) == pytest.approx(10.0)
    assert daily.today(day + 23 * 3_600_000 + 1_800_000) == 0.0
    daily.add(5.0, day + 23 * 3_600_000 + 1_800_000)
    assert daily.today(day + 23 * 3_600_000 + 1_800_000) == pytest.approx(5.0)


def test_daily_energy_day_follows_the_owner_zone() -> None:
    # 2026-07-15 00:00 UTC; New York is at UTC-4 (summer time), so its day turns at 04:00 UTC.
    jul = 1_784_073_600_000
    hour = 3_600_000
    daily = DailyEnergy(Policy(time_zone="America/New_York").local_day)
    daily.add(10.0, jul + 2 * hour)  # 22:00 on the 14th in New York
    assert daily.today(jul + 3 * hour + 59 * 60_000) == pytest.approx(10.0)  # 23:59
    assert daily.today(jul + 4 * hour) == 0.0  # midnight in New York
    utc = DailyEnergy()
    utc.add(10.0, jul + 2 * hour)
    assert utc.today(jul + 4 * hour) == pytest.approx(10.0)
