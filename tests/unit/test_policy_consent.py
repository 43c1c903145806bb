"""The owner's consent in the verdict, its words and wire form, and its claim's range."""

from __future__ import annotations

import pytest

from parkfleet.policy import (
    REASON_OWNER_PAUSED,
    REASON_OWNER_WITHDRAWN,
    Conditions,
    Eligibility,
    Policy,
)
from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.claims import CAR_REASONS, check_telemetry_claims
from parkfleet.protocol.consent import CONSENTS, consent_name, consent_value
from parkfleet.protocol.limits import ProtocolViolation
from tests.unit.test_policy import cond


@pytest.mark.parametrize(
    ("consent", "reason"),
    [
        (pb.CONSENT_UNSPECIFIED, ""),  # an older agent: active
        (pb.CONSENT_ACTIVE, ""),
        (pb.CONSENT_PAUSED, REASON_OWNER_PAUSED),
        (pb.CONSENT_WITHDRAWN, REASON_OWNER_WITHDRAWN),
    ],
)
def test_consent_decides_the_verdict(consent: pb.Consent.ValueType, reason: str) -> None:
    v = Eligibility(Policy()).update(cond(consent=consent))
    assert v.reason == reason
    assert v.eligible is (reason == "")


def test_consent_comes_before_every_other_reason() -> None:
    e = Eligibility(Policy(min_soc_percent=60))
    worst = {"parked": False, "plugged_in": False, "soc_percent": 10.0}
    assert e.update(cond(consent=pb.CONSENT_PAUSED, **worst)).reason == "OwnerPaused"
    assert e.update(cond(consent=pb.CONSENT_WITHDRAWN, **worst)).reason == "OwnerWithdrawn"


def test_battery_hysteresis_holds_through_a_pause() -> None:
    e = Eligibility(Policy(min_soc_percent=60, resume_soc_percent=65))
    assert e.update(cond(consent=pb.CONSENT_PAUSED, soc_percent=55)).reason == "OwnerPaused"
    # Resumed at 62 %: the battery stop that began during the pause still holds.
    assert e.update(cond(consent=pb.CONSENT_ACTIVE, soc_percent=62)).reason == "BatteryLow"
    assert e.update(cond(consent=pb.CONSENT_ACTIVE, soc_percent=65)).eligible


def test_conditions_read_the_consent_from_telemetry() -> None:
    t = pb.Telemetry(state=pb.PARKED, plugged_in=True, consent=pb.CONSENT_PAUSED)
    assert Conditions.from_telemetry(t).consent == pb.CONSENT_PAUSED
    # An older agent sends none: active.
    assert Conditions.from_telemetry(pb.Telemetry()).consent == pb.CONSENT_ACTIVE


def test_the_gateway_repeats_the_consent_reasons_of_a_car() -> None:
    assert {REASON_OWNER_PAUSED, REASON_OWNER_WITHDRAWN} <= CAR_REASONS


def test_consent_words_and_wire_values_round_trip() -> None:
    assert CONSENTS == ("active", "paused", "withdrawn")
    for name in CONSENTS:
        assert consent_name(consent_value(name)) == name
    assert consent_name(pb.CONSENT_UNSPECIFIED) == "active"
    with pytest.raises(ValueError, match="not a Consent"):
        consent_name(7)


def test_a_consent_out_of_range_is_a_protocol_violation() -> None:
    t = pb.Telemetry(state=pb.PARKED)
    check_telemetry_claims(t)
    # proto3 enums are open: an undefined number parses and must be refused here.
    t = pb.Telemetry.FromString(pb.Telemetry(state=pb.PARKED).SerializeToString() + b"\x48\x07")
    assert t.consent == 7
    with pytest.raises(ProtocolViolation, match=r"telemetry\.consent 7"):
        check_telemetry_claims(t)
