"""What a car may claim at Hello: its owner's time zone is one the gateway knows."""

from __future__ import annotations

import pytest

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.claims import MAX_TIME_ZONE_CHARS, check_hello_claims
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
