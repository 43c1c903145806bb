"""The owner's consent: its words (a car's settings file, the owner ledger) and its wire form.

The owner sets it in the car's own settings, never in the cluster (``Telemetry.consent``):
``active`` (the default; what an older agent's ``CONSENT_UNSPECIFIED`` means), ``paused``
(no work until the owner resumes) or ``withdrawn`` (the car leaves the fleet for good).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from parkfleet.protocol import carlink_pb2 as pb

__all__ = ["CONSENTS", "ConsentName", "consent_name", "consent_value"]

ConsentName = Literal["active", "paused", "withdrawn"]
CONSENTS: Final[tuple[ConsentName, ...]] = get_args(ConsentName)

_VALUES: Final[dict[str, pb.Consent.ValueType]] = {
    "active": pb.CONSENT_ACTIVE,
    "paused": pb.CONSENT_PAUSED,
    "withdrawn": pb.CONSENT_WITHDRAWN,
}
_NAMES: Final[dict[int, ConsentName]] = {
    pb.CONSENT_UNSPECIFIED: "active",
    pb.CONSENT_ACTIVE: "active",
    pb.CONSENT_PAUSED: "paused",
    pb.CONSENT_WITHDRAWN: "withdrawn",
}


def consent_value(name: ConsentName) -> pb.Consent.ValueType:
    """The wire value of a consent word."""
    return _VALUES[name]


def consent_name(value: int) -> ConsentName:
    """The word of a wire value (``CONSENT_UNSPECIFIED`` is ``active``).

    Raises:
        ValueError: Not a defined ``Consent`` (a car's claim out of range).
    """
    try:
        return _NAMES[value]
    except KeyError:
        raise ValueError(f"{value} is not a Consent") from None
