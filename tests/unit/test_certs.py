"""Fleet certificates: CA, gateway and car certificates, identity extraction, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from parkfleet import cli
from parkfleet.certs import FleetCA, car_identity, car_paths


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


def test_car_cert_carries_identity_and_attributes(ca: FleetCA) -> None:
    attrs = {"pool": "eu-west", "region": "eu", "model": "m3", "hardware": "hw4"}
    pair = ca.issue_car("car-0001", attrs)
    ident = car_identity(pair.cert_pem)
    assert ident.car_id == "car-0001"
    assert dict(ident.attributes) == attrs
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert car_identity(der) == ident
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_car_without_attributes(ca: FleetCA) -> None:
    assert dict(car_identity(ca.issue_car("c", {}).cert_pem).attributes) == {}


def test_a_car_is_its_own_owner_unless_its_certificate_names_one(ca: FleetCA) -> None:
    assert car_identity(ca.issue_car("c", {"pool": "p"}).cert_pem).owner == "c"
    ident = car_identity(ca.issue_car("c", {"pool": "p"}, owner="alice").cert_pem)
    assert ident.owner == "alice"
    assert dict(ident.attributes) == {"pool": "p", "owner": "alice"}
    with pytest.raises(ValueError, match="owner"):
        ca.issue_car("c", {}, owner="no/slash")


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 129, "-lead", "sp ace"])
def test_car_id_is_checked(ca: FleetCA, bad: str) -> None:
    with pytest.raises(ValueError, match="car id"):
        ca.issue_car(bad, {})


def test_gateway_cert_has_sans(ca: FleetCA) -> None:
    pair = ca.issue_gateway(["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


def test_save_and_load(ca: FleetCA, tmp_path: Path) -> None:
    ca.save(tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0
    loaded = FleetCA.load(tmp_path)
    assert loaded.cert_pem == ca.cert_pem
    cert = x509.load_pem_x509_certificate(loaded.issue_car("c1", {}).cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


def test_cli(tmp_path: Path) -> None:
    assert cli.main(["certs", "init", "--dir", str(tmp_path)]) == 0
    assert cli.main(["certs", "gateway", "--dir", str(tmp_path), "--host", "127.0.0.1"]) == 0
    assert (
        cli.main(["certs", "car", "--dir", str(tmp_path), "--car-id", "c9", "--attr", "pool=p1"])
        == 0
    )
    cert_path, key_path = car_paths(tmp_path, "c9")
    assert dict(car_identity(cert_path.read_bytes()).attributes) == {"pool": "p1"}
    assert key_path.stat().st_mode & 0o077 == 0
    assert (tmp_path / "gateway.crt").exists()
    # init again keeps the existing CA.
    before = (tmp_path / "ca.crt").read_bytes()
    assert cli.main(["certs", "init", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "ca.crt").read_bytes() == before
