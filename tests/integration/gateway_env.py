"""Shared setup for the gateway's integration tests: a CA, certificates, a gateway."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parkfleet.certs import FleetCA, KeyPair
from parkfleet.gateway import ConsentBook, Gateway, GatewayConfig
from tests.carlink_probe import ProbeCar


@dataclass
class Env:
    """A running gateway and the CA its cars' certificates come from."""

    ca: FleetCA
    gateway: Gateway
    pairs: dict[str, KeyPair] = field(default_factory=dict)

    def pair(self, car_id: str, attributes: Mapping[str, str] | None = None) -> KeyPair:
        if car_id not in self.pairs:
            self.pairs[car_id] = self.ca.issue_car(car_id, attributes or {"pool": "p"})
        return self.pairs[car_id]

    def car(self, car_id: str, **kwargs: Any) -> ProbeCar:
        return ProbeCar(self.gateway.address, self.ca.cert_pem, self.pair(car_id), **kwargs)


async def start_gateway(
    tmp_path: Path,
    ca: FleetCA,
    consent_book: ConsentBook | None = None,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    **config: Any,
) -> Env:
    server = ca.issue_gateway(list(hosts))
    gateway = Gateway(
        GatewayConfig(
            ca_pem=ca.cert_pem,
            cert_pem=server.cert_pem,
            key_pem=server.key_pem,
            models_dir=tmp_path / "models",
            **config,
        ),
        consent_book=consent_book,
    )
    await gateway.start()
    return Env(ca=ca, gateway=gateway)
