"""HTTPS endpoints that callers reach by address and authenticate by token (the node
agent's kubelet API, the authenticated ``/metrics``): a per-process self-signed serving
certificate, and an aiohttp app served with it.

The kube-apiserver does not verify kubelet serving certificates unless it is given
``--kubelet-certificate-authority``, and Prometheus scrapes pods by address; what the
certificate buys is an encrypted channel, so that a bearer token is never sent in clear.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["self_signed", "serve", "server_context"]


def self_signed(host: str, purpose: str = "parkfleet") -> tuple[bytes, bytes]:
    """A fresh EC key and a one-year certificate for ``host`` (an address or a name).

    Returns:
        ``(certificate PEM, key PEM)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{purpose}@{host}")])
    now = datetime.datetime.now(datetime.UTC)
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def server_context(host: str, purpose: str = "parkfleet") -> ssl.SSLContext:
    """A TLS server context serving a fresh :func:`self_signed` certificate for ``host``.

    Call it off the event loop (``asyncio.to_thread``): it makes a key and writes files.
    """
    cert, key = self_signed(host, purpose)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # ssl loads a chain only from files; they live as long as this call.
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.pem").write_bytes(cert)
        (Path(d) / "k.pem").write_bytes(key)
        ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")
    return ctx


async def serve(
    app: web.Application, host: str, port: int, ctx: ssl.SSLContext | None
) -> tuple[web.AppRunner, int]:
    """Serves ``app`` over TLS on ``host:port`` (0: a free port); plain HTTP when ``ctx``
    is None (the kubelet's probes, ``parkfleet.healthserver``).

    Returns:
        The runner (``await runner.cleanup()`` stops it) and the port it listens on.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    server: Any = site._server  # aiohttp exposes no public way to read the bound port
    if server is not None and server.sockets:
        port = int(server.sockets[0].getsockname()[1])
    return runner, port
