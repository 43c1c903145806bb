"""The fleet's certificates: a CA, the gateway's serving certificate, one per car.

A car's identity is its certificate (decision 4): the common name is the car id and
its attributes (pool, region, model, hardware, ...) travel in a private X.509
extension, so the gateway reads them from the verified certificate and never from
what the car says. Keys are EC P-256.

Files: ``DIR/ca.crt``, ``DIR/ca.key``; ``DIR/gateway.crt``, ``DIR/gateway.key``;
``DIR/cars/<car_id>.crt``, ``DIR/cars/<car_id>.key``.

Cars' certificates are client certificates (extended key usage ``clientAuth``) and the
gateway's a server certificate (``serverAuth``); the TLS layer refuses either in the
other's place, and the gateway checks it again. A certificate is *issued at* a whole
second (``notBefore`` is that second less ``_BACKDATE``, for clock skew): a revocation
of a car refuses every certificate of it issued at or before the revocation, and
``parkfleet certs renew`` issues one dated after it (``docs/security.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ATTRIBUTES_OID",
    "CARS_DIR",
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "GATEWAY_CERT_FILE",
    "GATEWAY_KEY_FILE",
    "OWNER_ATTRIBUTE",
    "CarIdentity",
    "FleetCA",
    "KeyPair",
    "car_identity",
    "car_paths",
    "register",
]

# A private OID (2.25 = UUID-derived arc, no registration needed) for the extension
# that carries a car's attributes as canonical JSON.
ATTRIBUTES_OID = x509.ObjectIdentifier("2.25.184593847152349618260431093842587310195")

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
GATEWAY_CERT_FILE = "gateway.crt"
GATEWAY_KEY_FILE = "gateway.key"
CARS_DIR = "cars"
# The attribute naming a car's owner (a person or a fleet operator); see CarIdentity.owner.
OWNER_ATTRIBUTE = "owner"

_CAR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CA_DAYS = 3650
_LEAF_DAYS = 365
# Backdating absorbs clock skew between the CA host and the peers.
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def save(self, cert_path: Path, key_path: Path) -> None:
        """Writes both files, each replaced atomically, the key first (an agent that
        reloads on a new certificate finds its key already there); the key is readable
        by its owner only."""
        _write_private(key_path, self.key_pem)
        _write_atomic(cert_path, self.cert_pem, 0o644)


@dataclass(frozen=True)
class CarIdentity:
    """Who a car is, as its certificate says.

    Attributes:
        car_id: The certificate's common name.
        attributes: e.g. ``{"pool": ..., "region": ..., "model": ..., "hardware": ...}``.
        issued_at: When it was issued (unix seconds; see the module docstring).
        expires_at: Its ``notAfter`` (unix seconds).
        client_auth: Whether it is a client certificate (extended key usage
            ``clientAuth``, not a CA): only those speak for a car.
    """

    car_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    issued_at: float = 0.0
    expires_at: float = math.inf
    client_auth: bool = True

    @property
    def owner(self) -> str:
        """Who owns the car: its ``owner`` attribute, or the car itself when it has none.

        Copies of one unit go to cars of different owners: one owner's certificates
        are one voter, however many there are.
        """
        return self.attributes.get(OWNER_ATTRIBUTE) or self.car_id


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def issue_second(after: float = 0.0) -> int:
    """The whole second a certificate issued now is dated: the next one, and one past
    the second of ``after`` (a revocation it must postdate; 0: none)."""
    return max(math.ceil(time.time()), math.ceil(after) + 1 if after else 0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_car_id(car_id: str, what: str = "car id") -> None:
    if not _CAR_ID.match(car_id):
        raise ValueError(
            f"{what} {car_id!r} must be 1-128 characters of letters, digits, '.', '_', '-'"
        )


class FleetCA:
    """The fleet's certificate authority: signs the gateway's and the cars' certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, common_name: str = "parkfleet fleet CA") -> FleetCA:
        """Creates a new self-signed CA.

        Args:
            common_name: The CA's subject common name.

        Returns:
            The CA, in memory; call :meth:`save` to keep it.
        """
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> FleetCA:
        """Loads ``ca.crt`` and ``ca.key`` from ``directory``."""
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / CA_KEY_FILE).read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY_FILE} is not an EC private key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        """Writes ``ca.crt`` and ``ca.key`` (mode 0600) into ``directory``."""
        KeyPair(self._cert_pem, _key_pem(self._key)).save(
            directory / CA_CERT_FILE, directory / CA_KEY_FILE
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM: the trust root both sides load."""
        return self._cert_pem

    def _leaf(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        extensions: Sequence[tuple[x509.ExtensionType, bool]],
        lifetime: dt.timedelta | None = None,
        issued_after: float = 0.0,
    ) -> KeyPair:
        key = _new_key()
        now = dt.datetime.fromtimestamp(issue_second(issued_after), dt.UTC)
        life = lifetime if lifetime is not None else dt.timedelta(days=_LEAF_DAYS)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + life)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_gateway(self, hosts: Sequence[str]) -> KeyPair:
        """Issues the gateway's serving certificate.

        Args:
            hosts: Names and IP addresses the gateway is reached at, e.g.
                ``["127.0.0.1", "localhost"]``; each becomes a subject alternative name.

        Returns:
            The serving certificate and key.
        """
        if not hosts:
            raise ValueError("the gateway certificate needs at least one host")
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._leaf(
            subject,
            ExtendedKeyUsageOID.SERVER_AUTH,
            [(x509.SubjectAlternativeName(names), False)],
        )

    def issue_car(
        self,
        car_id: str,
        attributes: Mapping[str, str],
        owner: str = "",
        *,
        lifetime: dt.timedelta | None = None,
        issued_after: float = 0.0,
    ) -> KeyPair:
        """Issues a car's client certificate.

        Args:
            car_id: The car's id; becomes the common name.
            attributes: Attributes such as pool and region, stored in the certificate.
            owner: Who owns the car (the ``owner`` attribute, same rules as a car id);
                "" leaves the attributes' own, or none: the car is then its own owner.
            lifetime: How long it is valid (default 365 days).
            issued_after: Date it after this moment (unix seconds): a renewal postdates
                the car's revocation.

        Returns:
            The client certificate and key.
        """
        _check_car_id(car_id)
        attrs = {str(k): str(v) for k, v in attributes.items()}
        if owner:
            _check_car_id(owner, "owner")
            attrs[OWNER_ATTRIBUTE] = owner
        payload = json.dumps(attrs, sort_keys=True, separators=(",", ":")).encode()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "parkfleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, car_id),
            ]
        )
        return self._leaf(
            subject,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            [(x509.UnrecognizedExtension(ATTRIBUTES_OID, payload), False)],
            lifetime,
            issued_after,
        )


def car_identity(cert_pem_or_der: bytes) -> CarIdentity:
    """Reads a car's identity out of its (already verified) certificate.

    Args:
        cert_pem_or_der: The certificate, PEM or DER.

    Returns:
        The car id (common name) and attributes.

    Raises:
        ValueError: The certificate has no common name or malformed attributes.
    """
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(cert_pem_or_der)
    else:
        cert = x509.load_der_x509_certificate(cert_pem_or_der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError("the certificate has no common name")
    car_id = names[0].value
    if isinstance(car_id, bytes):
        car_id = car_id.decode()
    attributes: dict[str, str] = {}
    try:
        ext = cert.extensions.get_extension_for_oid(ATTRIBUTES_OID)
    except x509.ExtensionNotFound:
        pass
    else:
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            raise ValueError("car attributes extension has an unexpected type")
        try:
            raw: Any = json.loads(value.value)
        except ValueError as e:
            raise ValueError(f"car attributes are not JSON: {e}") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise ValueError("car attributes must be a JSON object of strings")
        attributes = raw
    return CarIdentity(
        car_id=car_id,
        attributes=attributes,
        issued_at=(cert.not_valid_before_utc + _BACKDATE).timestamp(),
        expires_at=cert.not_valid_after_utc.timestamp(),
        client_auth=_is_client_cert(cert),
    )


def _is_client_cert(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage and not ca


def car_paths(directory: Path, car_id: str) -> tuple[Path, Path]:
    """Where ``parkfleet certs car`` writes a car's certificate and key."""
    return directory / CARS_DIR / f"{car_id}.crt", directory / CARS_DIR / f"{car_id}.key"


# ---- CLI -----------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if (directory / CA_KEY_FILE).exists() and not args.force:
        print(f"{directory / CA_KEY_FILE} exists; keeping it (use --force to replace)")
        return 0
    FleetCA.create(args.common_name).save(directory)
    print(f"wrote {directory / CA_CERT_FILE} and {directory / CA_KEY_FILE}")
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    pair = FleetCA.load(directory).issue_gateway(args.host or ["127.0.0.1", "localhost"])
    pair.save(directory / GATEWAY_CERT_FILE, directory / GATEWAY_KEY_FILE)
    print(f"wrote {directory / GATEWAY_CERT_FILE} and {directory / GATEWAY_KEY_FILE}")
    return 0


def _parse_attrs(items: Sequence[str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--attr {item!r}: expected KEY=VALUE")
        attrs[key] = value
    return attrs


def _cmd_car(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    pair = FleetCA.load(directory).issue_car(
        args.car_id, _parse_attrs(args.attr), args.owner, lifetime=_lifetime(args)
    )
    cert_path, key_path = car_paths(directory, args.car_id)
    pair.save(cert_path, key_path)
    print(f"wrote {cert_path} and {key_path}")
    return 0


def _lifetime(args: argparse.Namespace) -> dt.timedelta | None:
    if args.hours is not None:
        return dt.timedelta(hours=args.hours)
    return None


def _cmd_renew(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    cert_path, key_path = car_paths(directory, args.car_id)
    try:
        old = car_identity(cert_path.read_bytes())
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read the certificate of {args.car_id}: {e}") from None
    # Dated after any revocation written before now: a renewed car is accepted again.
    pair = FleetCA.load(directory).issue_car(
        args.car_id, old.attributes, lifetime=_lifetime(args), issued_after=time.time()
    )
    pair.save(cert_path, key_path)
    print(f"wrote {cert_path} and {key_path} (a running agent uses them from its next connection)")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    import asyncio

    from parkfleet.revoke import revoke  # the Kubernetes client, only for this command

    _check_car_id(args.car_id)
    value = asyncio.run(
        revoke(args.car_id, args.configmap, undo=args.undo, kubeconfig=args.kubeconfig)
    )
    if args.undo:
        print(f"{args.car_id}: revocation lifted in {args.configmap}")
    else:
        print(
            f"{args.car_id}: certificates issued until {value} (unix s) revoked in "
            f"{args.configmap}; every gateway shard closes its stream"
        )
    return 0


def register(subparsers: Any) -> None:
    """Adds ``parkfleet certs {init,gateway,car,renew,revoke}``."""
    parser = subparsers.add_parser("certs", help="create the fleet CA and certificates")
    sub = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")

    p = sub.add_parser("init", help="create the fleet CA (ca.crt, ca.key)")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--common-name", default="parkfleet fleet CA")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("gateway", help="issue the gateway's serving certificate")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--host", action="append", help="name or IP (repeatable)")
    p.set_defaults(func=_cmd_gateway)

    p = sub.add_parser("car", help="issue a car's client certificate")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--car-id", required=True)
    p.add_argument("--attr", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument(
        "--owner", default="", help="who owns the car (default: the car is its own owner)"
    )
    p.add_argument("--hours", type=float, default=None, help="lifetime (default 365 days)")
    p.set_defaults(func=_cmd_car)

    p = sub.add_parser(
        "renew", help="issue a car a new certificate (same id and attributes, dated now)"
    )
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--car-id", required=True)
    p.add_argument("--hours", type=float, default=None, help="lifetime (default 365 days)")
    p.set_defaults(func=_cmd_renew)

    p = sub.add_parser(
        "revoke",
        help="revoke every certificate of a car issued until now (every gateway shard "
        "refuses it and closes its stream)",
    )
    p.add_argument("car_id", metavar="CAR_ID")
    p.add_argument(
        "--configmap",
        default="parkfleet-system/parkfleet-revocations",
        metavar="NAMESPACE/NAME",
        help="the ConfigMap the gateways watch (their --revocations-configmap)",
    )
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--undo", action="store_true", help="lift the car's revocation")
    p.set_defaults(func=_cmd_revoke)
