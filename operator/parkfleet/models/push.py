"""``parkfleet model push FILE --to s3://bucket/key``: an ONNX model into object storage,
ready for an InferenceJob to name by reference.

The file is checked first (ONNX Runtime must load it, as the gateway will), then uploaded
with obstore (in parts, concurrently, when it is larger than one part) while it is hashed,
so that the sha256 printed is that of the very bytes sent. The command prints that digest
and a ``model:`` block to paste into the job's spec; the gateways fetch the object with
the job's object-store Secret, verify the digest and serve it to cars by hash.

Credentials, one of:

- ``--secret NAMESPACE/NAME``: the ``parkfleet.io/object-store`` Secret the job will name
  (read with your kubeconfig), so that what you push is where the job's keys reach;
- otherwise the environment, as AWS tools read it: ``AWS_ENDPOINT_URL`` (or
  ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
  optionally ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parkfleet.objectstore import (
    BadSecret,
    MissingCredentials,
    S3Credentials,
    S3Location,
    credentials_from_secret,
    explain_error,
    parse_s3_uri,
    s3_store,
)
from parkfleet.objectstore import credentials_from_env as objectstore_env

__all__ = [
    "PushError",
    "Pushed",
    "add_parser",
    "check_model",
    "credentials_from_env",
    "model_block",
    "push",
    "target_of",
]

PART_BYTES = 8 * 1024 * 1024  # one part of a multipart upload, and one read of the file
_CONCURRENT_PARTS = 8
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


class PushError(Exception):
    """The model cannot be pushed; the message says why (never a key)."""


@dataclass(frozen=True, slots=True)
class Pushed:
    """What was uploaded.

    Attributes:
        uri: ``s3://bucket/key``.
        sha256: The digest of the bytes sent.
        size_bytes: How many.
    """

    uri: str
    sha256: str
    size_bytes: int


def target_of(uri: str) -> S3Location:
    """The object ``--to`` names.

    Raises:
        PushError: Not an ``s3://bucket/key`` of one object.
    """
    try:
        location = parse_s3_uri(uri)
    except ValueError as exc:
        raise PushError(f"--to {uri!r}: {exc}") from None
    if not location.key or location.key.endswith("/"):
        raise PushError(f"--to {uri!r}: name the object, s3://bucket/key (not a prefix)")
    return location


def credentials_from_env(environ: Mapping[str, str]) -> S3Credentials:
    """The object store and keys the AWS variables of ``environ`` name
    (:func:`parkfleet.objectstore.credentials_from_env`).

    Raises:
        PushError: One is missing or malformed (the message names the variable).
    """
    try:
        return objectstore_env(environ)
    except MissingCredentials as exc:
        raise PushError(
            f"no credentials: give --secret NAMESPACE/NAME, or set {', '.join(exc.missing)}"
        ) from None
    except BadSecret as exc:
        raise PushError(str(exc)) from None


def _secret_ref(ref: str) -> tuple[str, str]:
    namespace, _, name = ref.partition("/")
    for part in (namespace, name):
        if not part or len(part) > 253 or not set(part) <= _NAME_CHARS:
            raise PushError(f"--secret {ref!r}: expected NAMESPACE/NAME")
    return namespace, name


async def credentials_from_cluster(ref: str, kubeconfig: str | None) -> S3Credentials:
    """The credentials the object-store Secret ``NAMESPACE/NAME`` holds, read with the
    caller's kubeconfig.

    Raises:
        PushError: No such Secret, the kubeconfig's user may not read it, or it is not an
            object-store Secret.
    """
    from kubernetes_asyncio import client  # only this way of giving credentials needs it
    from kubernetes_asyncio.client.exceptions import ApiException

    from parkfleet.kubeclient import connect

    namespace, name = _secret_ref(ref)
    api = await connect("parkfleet-model-push", kubeconfig)
    try:
        secret = await client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise PushError(f"--secret {ref}: no Secret {name} in namespace {namespace}") from None
        if exc.status in (401, 403):
            raise PushError(
                f"--secret {ref}: your kubeconfig's user may not read Secret {name} in "
                f"namespace {namespace}"
            ) from None
        raise PushError(f"--secret {ref}: the API server answered {exc.status}") from None
    finally:
        await api.close()
    try:
        return credentials_from_secret({"type": secret.type, "data": secret.data})
    except BadSecret as exc:
        raise PushError(f"--secret {ref}: Secret {name} {exc}") from None


def check_model(path: Path) -> tuple[list[str], list[str]]:
    """The model's input and output names, if ONNX Runtime loads it (as the gateway
    will before any car gets it).

    Raises:
        PushError: No such file, or not a model ONNX Runtime loads.
    """
    if not path.is_file():
        raise PushError(f"{path}: no such file")
    import onnxruntime as ort  # slow to import: only once a file is there

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # the runtime's own errors: the file is not a model it loads
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PushError(f"{path}: not an ONNX model ONNX Runtime loads ({first})") from None
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


async def _blocks(path: Path, digest: Any, sizes: list[int]) -> AsyncIterator[bytes]:
    """The file's bytes, read off the event loop, hashed as they are handed out."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while block := await asyncio.to_thread(f.read, PART_BYTES):
            digest.update(block)
            sizes.append(len(block))
            yield block
    finally:
        f.close()


async def push(path: Path, to: S3Location, credentials: S3Credentials) -> Pushed:
    """Uploads ``path`` as object ``to``; the digest is that of the bytes sent.

    Raises:
        PushError: The object store refused it or could not be reached (the message says
            which, never a key); nothing is left behind (an upload is all or nothing).
    """
    import obstore
    from obstore.exceptions import BaseError

    store = s3_store(credentials, to.bucket)
    digest = hashlib.sha256()
    sizes: list[int] = []
    try:
        await obstore.put_async(
            store,
            to.key,
            _blocks(path, digest, sizes),
            chunk_size=PART_BYTES,
            max_concurrency=_CONCURRENT_PARTS,
        )
        head = await obstore.head_async(store, to.key)
    except (BaseError, FileNotFoundError) as exc:  # obstore's NotFoundError is the latter
        raise PushError(f"{to.uri}: {explain_error(exc, credentials)}") from None
    size = sum(sizes)
    if int(head["size"]) != size:
        raise PushError(f"{to.uri}: the object store holds {head['size']} bytes, not {size}")
    return Pushed(uri=to.uri, sha256=digest.hexdigest(), size_bytes=size)


def model_block(pushed: Pushed, secret: str = "") -> str:
    """The lines of an InferenceJob's spec that name the pushed model (two-space indent,
    as under ``spec:``), with the object-store Secret when known."""
    lines = ["  model:", f"    uri: {pushed.uri}", f"    sha256: {pushed.sha256}"]
    lines += [
        "  objectStore:",
        f"    secretName: {secret or '<a parkfleet.io/object-store Secret>'}",
    ]
    return "\n".join(lines)


def _cmd_push(args: argparse.Namespace) -> int:
    try:
        to = target_of(args.to)
        path = Path(args.file)
        inputs, outputs = check_model(path)
        if args.secret:
            credentials = asyncio.run(credentials_from_cluster(args.secret, args.kubeconfig))
        else:
            credentials = credentials_from_env(_environ())
        pushed = asyncio.run(push(path, to, credentials))
    except PushError as exc:
        print(f"parkfleet model push: {exc}", file=sys.stderr)
        return 1
    namespace, _, name = (args.secret or "").partition("/")
    print(f"pushed {path} ({pushed.size_bytes} bytes) to {pushed.uri}")
    print(f"inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)}")
    print(f"sha256: {pushed.sha256}")
    print()
    print("# Paste under the InferenceJob's spec:. The gateways fetch the model with the")
    print("# object-store Secret spec.objectStore names, check its sha256 and serve it to")
    if args.secret:
        print(f"# cars by hash. The job goes in namespace {namespace}, where Secret {name} is.")
    else:
        print("# cars by hash. Name a parkfleet.io/object-store Secret of the job's namespace")
        print("# that holds this endpoint and keys (see docs/models.md).")
    print(model_block(pushed, name))
    return 0


def _environ() -> Mapping[str, str]:
    import os

    return os.environ


def add_parser(sub: Any) -> None:
    """Adds ``parkfleet model push FILE --to s3://bucket/key``."""
    p = sub.add_parser(
        "push",
        help="upload an ONNX model to object storage; print its sha256 and a model: block",
        description=(
            "Checks that ONNX Runtime loads FILE, uploads it to --to (multipart when large) "
            "and prints its sha256 and the model: and objectStore: lines of an InferenceJob. "
            "Credentials: --secret NAMESPACE/NAME (a parkfleet.io/object-store Secret, read "
            "with your kubeconfig), or else AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and AWS_REGION from the environment."
        ),
    )
    p.add_argument("file", metavar="FILE", help="the .onnx model")
    p.add_argument("--to", required=True, metavar="s3://BUCKET/KEY", help="the object to write")
    p.add_argument(
        "--secret",
        default="",
        metavar="NAMESPACE/NAME",
        help="take the endpoint and keys from this object-store Secret (the job's)",
    )
    p.add_argument("--kubeconfig", default=None, help="with --secret (default: the usual lookup)")
    p.set_defaults(func=_cmd_push)
