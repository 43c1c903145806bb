"""Object storage (S3 and the servers that speak it): where a job's credentials come from,
what an ``s3://`` URI names, and the client the gateway reads and writes with.

A job's object storage is named by a Secret in the job's own namespace, of type
``parkfleet.io/object-store``, holding the endpoint with the keys::

    endpoint: https://s3.example.com      # http:// too (a server in the cluster)
    accessKeyId: ...
    secretAccessKey: ...
    region: us-east-1                     # optional

The endpoint lives in the Secret, beside the keys, so that whoever may create pods but
not read the Secret cannot send its keys' signatures to a server of their choosing. The
type is checked, so that the gateway never uses a Secret that was not written for it
(a service account token, a TLS key) even where its RBAC would let it read one: the
chart grants ``get`` on the Secrets its values name, and no list or watch anywhere.

The client is obstore (Rust's ``object_store`` under an asyncio API): its calls run off
the event loop in Rust, ranged reads return bytes without a copy through Python, and
large uploads go in parts, concurrently.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig

__all__ = [
    "SECRET_TYPE",
    "BadSecret",
    "MissingCredentials",
    "S3Credentials",
    "S3Location",
    "credentials_from_env",
    "credentials_from_secret",
    "explain_error",
    "is_s3_uri",
    "parse_s3_uri",
    "s3_store",
    "secret_manifest",
]

SECRET_TYPE = "parkfleet.io/object-store"
DEFAULT_REGION = "us-east-1"
MAX_KEY = 1024  # S3's own limit on an object key, in bytes
# A bucket name as S3 allows it (3..63 of lowercase letters, digits, dots and dashes).
_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


class BadSecret(ValueError):
    """A job's object-store Secret cannot be used; the message says why and which key."""


@dataclass(frozen=True)
class S3Credentials:
    """Where an object store is and the keys to it (from a job's Secret).

    Attributes:
        endpoint: ``https://host[:port]`` or ``http://host[:port]``.
        access_key_id: The access key.
        secret_access_key: The secret key (never shown in ``repr``).
        region: The region requests are signed for.
    """

    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = DEFAULT_REGION

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadSecret(f"endpoint: {self.endpoint!r} is not an http:// or https:// URL")
        if parts.username or parts.password:
            raise BadSecret(
                "endpoint: holds credentials; put them in accessKeyId and secretAccessKey"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BadSecret("endpoint: only scheme, host and port (no path, query or fragment)")
        _ = parts.port  # raises ValueError for a port that is not a number
        if not self.access_key_id:
            raise BadSecret("accessKeyId: empty")
        if not self.secret_access_key:
            raise BadSecret("secretAccessKey: empty")


@dataclass(frozen=True, slots=True)
class S3Location:
    """An object or a prefix: ``s3://bucket/key``.

    Attributes:
        bucket: The bucket.
        key: The object's key, or a prefix (no leading ``/``; may be empty).
    """

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Location:
        """The object ``name`` under this prefix."""
        prefix = self.key.rstrip("/")
        return S3Location(self.bucket, f"{prefix}/{name}" if prefix else name)


def is_s3_uri(text: str) -> bool:
    """Whether ``text`` names object storage (``s3://``) rather than a volume path."""
    return text.lower().startswith("s3://")


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` read and checked.

    Raises:
        ValueError: Not such a URI; the message says what is wrong.
    """
    if not is_s3_uri(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    if not uri.isprintable() or any(c.isspace() for c in uri):
        raise ValueError("an s3:// URI holds no spaces or control characters")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET_CHARS:
        raise ValueError(
            f"{bucket!r} is not a bucket name (3 to 63 lowercase letters, digits, '.' and '-')"
        )
    if "?" in key or "#" in key:
        raise ValueError("an s3:// URI has no query or fragment")
    if len(key.encode()) > MAX_KEY:
        raise ValueError(f"the key is longer than {MAX_KEY} bytes")
    if any(part in (".", "..") for part in key.split("/")):
        raise ValueError("the key holds a '.' or '..' part")
    return S3Location(bucket, key)


def _value(data: Mapping[str, str], key: str, *, required: bool = True) -> str:
    raw = data.get(key)
    if raw is None:
        if required:
            raise BadSecret(f"has no key {key!r}")
        return ""
    try:
        return base64.b64decode(raw, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise BadSecret(f"{key}: not base64 of UTF-8 text") from None


class MissingCredentials(BadSecret):
    """The environment names no object store (``missing``: the variables not set)."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"set {', '.join(missing)}")
        self.missing = missing


def credentials_from_env(environ: Mapping[str, str]) -> S3Credentials:
    """The object store and keys the AWS variables of ``environ`` name:
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, and ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (optional).

    Raises:
        MissingCredentials: Some are not set.
        BadSecret: The endpoint is malformed (the message names ``AWS_ENDPOINT_URL``).
    """
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL", "")
    missing = [
        name
        for name, value in (
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", environ.get("AWS_ACCESS_KEY_ID", "")),
            ("AWS_SECRET_ACCESS_KEY", environ.get("AWS_SECRET_ACCESS_KEY", "")),
        )
        if not value
    ]
    if missing:
        raise MissingCredentials(missing)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    try:
        return S3Credentials(
            endpoint, environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"], region
        )
    except BadSecret as exc:  # "endpoint: ..." (the keys are not empty): name the variable
        raise BadSecret(f"AWS_ENDPOINT_URL{str(exc).removeprefix('endpoint')}") from None


def credentials_from_secret(secret: Mapping[str, Any]) -> S3Credentials:
    """The credentials a Secret (a dict from the API: ``type``, base64 ``data``) holds.

    Raises:
        BadSecret: It is not a ``parkfleet.io/object-store`` Secret, or a key is missing
            or malformed (the message names the key; never a value).
    """
    kind = secret.get("type")
    if kind != SECRET_TYPE:
        raise BadSecret(
            f"is of type {kind!r}, not {SECRET_TYPE!r}: the gateway uses only Secrets "
            "written for object storage"
        )
    data: Mapping[str, str] = secret.get("data") or {}
    return S3Credentials(
        endpoint=_value(data, "endpoint"),
        access_key_id=_value(data, "accessKeyId"),
        secret_access_key=_value(data, "secretAccessKey"),
        region=_value(data, "region", required=False) or DEFAULT_REGION,
    )


def secret_manifest(name: str, namespace: str, credentials: S3Credentials) -> dict[str, Any]:
    """A Secret holding ``credentials``, as :func:`credentials_from_secret` reads it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": SECRET_TYPE,
        "stringData": {
            "endpoint": credentials.endpoint,
            "accessKeyId": credentials.access_key_id,
            "secretAccessKey": credentials.secret_access_key,
            "region": credentials.region,
        },
    }


def s3_store(
    credentials: S3Credentials, bucket: str, request_timeout_s: float | None = None
) -> S3Store:
    """An obstore client for one bucket (path-style requests: any S3 server).

    One client per (credentials, bucket, timeout) is kept, so the units of a job reuse its
    connections (a TLS handshake per unit's result otherwise) instead of a new client each.

    Args:
        request_timeout_s: How long one request may take, body included (obstore's default
            is 30 s: too short for streaming a large model over a slow link).
    """
    return _client(credentials, bucket, request_timeout_s)


@functools.lru_cache(maxsize=64)
def _client(credentials: S3Credentials, bucket: str, request_timeout_s: float | None) -> S3Store:
    options: ClientConfig = {"allow_http": credentials.endpoint.startswith("http://")}
    if request_timeout_s is not None:
        options["timeout"] = f"{max(1, math.ceil(request_timeout_s))}s"
    return S3Store(
        bucket,
        endpoint=credentials.endpoint.rstrip("/"),
        access_key_id=credentials.access_key_id,
        secret_access_key=credentials.secret_access_key,
        region=credentials.region,
        virtual_hosted_style_request=False,
        client_options=options,
    )


# The error code of an S3 server's XML answer: the one part of it a message may show.
_S3_CODE = re.compile(r"<Code>([A-Za-z.]{1,64})</Code>")
# What the codes an S3 server answers with mean to whoever wrote the keys.
_S3_CODES = {
    "NoSuchKey": "no such object",
    "NoSuchBucket": "no such bucket",
    "InvalidAccessKeyId": "the object store knows no such access key (accessKeyId)",
    "XAdminUserNotFound": "the object store knows no such access key (accessKeyId)",
    "SignatureDoesNotMatch": (
        "the object store refused the keys (the signature does not match: check secretAccessKey)"
    ),
    "AccessDenied": "access denied with these keys",
}


def explain_error(exc: BaseException, credentials: S3Credentials) -> str:
    """Why an obstore call failed, in words that hold no key and none of the client's own
    text (which quotes the server's whole answer): of that answer, only the S3 error code.

    Args:
        exc: What obstore raised (its ``BaseError``s, or its ``NotFoundError``, a
            ``FileNotFoundError``).
        credentials: The object store it talked to (its endpoint's host is named).
    """
    text = str(exc)
    found = _S3_CODE.search(text)
    code = found.group(1) if found else ""
    if code in _S3_CODES:
        return _S3_CODES[code]
    if isinstance(exc, FileNotFoundError):
        return "no such object"
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return f"access denied with these keys{f' ({code})' if code else ''}"
    host = urlsplit(credentials.endpoint).hostname
    if isinstance(exc, BaseError) and "error sending request" in text:
        return f"cannot connect to the object store at {host}"
    return f"the object store at {host} failed ({type(exc).__name__}{f', {code}' if code else ''})"
