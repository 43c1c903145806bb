"""What a car may claim: at Hello its owner's time zone is one the gateway knows; in
telemetry its expected stay is a finite number of seconds up to a week."""

from __future__ import annotations

import math

import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.claims import (
    MAX_EXPECTED_STAY_S,
    MAX_TIME_ZONE_CHARS,
    check_hello_claims,
    check_telemetry_claims,
)
from parkfleet.protocol.limits import ProtocolViolation


def hello(time_zone: str) -> pb.Hello:
    return pb.Hello(policy=pb.OwnerPolicy(time_zone=time_zone))


@pytest.mark.parametrize("zone", ["", "UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_a_known_time_zone_is_accepted(zone: str) -> None:
    check_hello_claims(hello(zone))


@pytest.mark.parametrize(
    ("zone", "match"),
    [
        ("Mars/Olympus_Mons", r"hello.policy.time_zone 'Mars/Olympus_Mons' is not a known"),
        ("Europe", r"hello.policy.time_zone 'Europe' is not a known"),
        ("../../etc/passwd", r"hello.policy.time_zone '../../etc/passwd' is not a known"),
        ("/etc/localtime", r"hello.policy.time_zone '/etc/localtime' is not a known"),
        ("Europe/Berlin\x00", r"hello.policy.time_zone .* is not a known"),
        ("Z" * (MAX_TIME_ZONE_CHARS + 1), r"hello.policy.time_zone is 65 characters, the limit"),
    ],
)
def test_an_unknown_or_overlong_time_zone_is_a_violation(zone: str, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        check_hello_claims(hello(zone))


@pytest.mark.parametrize("stay", [0.0, 1.0, 3600.0, MAX_EXPECTED_STAY_S])
def test_an_expected_stay_in_range_is_accepted(stay: float) -> None:
    check_telemetry_claims(pb.Telemetry(state=pb.PARKED, expected_stay_s=stay))


@pytest.mark.parametrize(
    "stay", [-1.0, math.nan, math.inf, -math.inf, MAX_EXPECTED_STAY_S + 1, 1e300]
)
def test_an_expected_stay_out_of_range_is_a_violation_naming_the_field(stay: float) -> None:
    with pytest.raises(ProtocolViolation, match=r"telemetry.expected_stay_s .* is not in 0\.\."):
        check_telemetry_claims(pb.Telemetry(state=pb.PARKED, expected_stay_s=stay))
