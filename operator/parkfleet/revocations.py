"""The fleet admin's revocation list: which cars' certificates no gateway accepts.

It lives in one ConfigMap (``parkfleet-revocations`` in the gateway's namespace by
default) that every gateway shard's node agent watches, so a revocation reaches every
shard within a watch event. Each key is a car id, each value the revocation's moment
in whole unix seconds (``parkfleet certs revoke CAR_ID`` writes it): every certificate
of that car issued at or before that second is refused, at the handshake's Hello and on
a live stream; a certificate issued after it (``parkfleet certs renew``) is accepted.
A value that is not a number revokes every certificate of the car (fail closed).

Pure: parsing and the rule. Writing the ConfigMap is ``parkfleet.revoke``'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

__all__ = ["DEFAULT_CONFIGMAP", "Revocations", "entry", "parse", "revoked"]

log = logging.getLogger(__name__)

DEFAULT_CONFIGMAP = "parkfleet-revocations"

Revocations = Mapping[str, float]
"""Car id -> the moment (unix seconds) before which its certificates are revoked."""


def entry(at: float) -> str:
    """The ConfigMap value of a revocation at ``at`` (unix seconds): its whole second,
    rounded up, so that a certificate issued in that second is revoked too."""
    return str(math.ceil(at))


def parse(data: Mapping[str, str] | None) -> dict[str, float]:
    """A ConfigMap's ``data`` as revocations; a value that is no number revokes all."""
    out: dict[str, float] = {}
    for car_id, value in (data or {}).items():
        try:
            at = float(value)
        except ValueError:
            at = math.nan
        if not math.isfinite(at):
            log.warning(
                "revocation of %s: %r is no time; all its certificates refused", car_id, value
            )
            at = math.inf
        out[car_id] = at
    return out


def revoked(revocations: Revocations, car_id: str, issued_at: float) -> bool:
    """Whether a certificate of ``car_id`` issued at ``issued_at`` (unix seconds; see
    ``CarIdentity.issued_at``) is revoked: issued at or before its car's revocation."""
    at = revocations.get(car_id)
    if at is None:
        return False
    # Certificates are dated to whole seconds: one issued in the revocation's second is
    # revoked too.
    return at == math.inf or issued_at <= math.ceil(at)
