"""The gateway's own download of a model a pod names by ``https://`` or ``s3://`` URI.

Cars never fetch from a location a pod names (decision 5): the gateway does, once, and
keeps the model in its store, from where cars get it by hash as any other. The download
is bounded in size and in time, and the bytes are hashed as they are spooled to a
temporary file beside the store's files: only a file whose sha256 is the one the pod named
is renamed into the store. File writes and hashing run in a thread, so nothing of it
blocks the event loop.

- ``https://``: TLS is verified (against the system CAs, or a configured bundle) and
  redirects are followed only to ``https://``.
- ``s3://bucket/key``: one streaming GET (obstore) from the endpoint of the pod's
  object-store Secret, signed with its keys; the endpoint's host must pass the same
  allow-list.

Messages say what failed in terms of the URI's host and path (never its query, which may
hold a signed token), and never echo the library's own text, a key, or the bytes' actual
digest (of an S3 server's answer, only its error code).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import obstore
from obstore.exceptions import BaseError
from yarl import URL

from parkfleet.contract import check_model_uri
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.objectstore import (
    S3Credentials,
    S3Location,
    explain_error,
    is_s3_uri,
    parse_s3_uri,
    s3_store,
)
from parkfleet.taskport import ModelDigestMismatch, ModelFetchFailed

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TIMEOUT_S", "FetchConfig", "ModelFetcher"]

DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024  # a car takes no larger model either
DEFAULT_TIMEOUT_S = 900.0
MAX_REDIRECTS = 5
# A server that sends nothing for this long is given up on before the whole timeout.
READ_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 30.0
# Received bytes are handed to the writing thread in batches of about this much.
_BATCH_BYTES = 4 * 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchConfig:
    """How the gateway downloads models pods name by URI.

    Attributes:
        max_bytes: The largest model it downloads; a longer body is cut there and refused.
        timeout_s: The whole download (connect, redirects, body, hashing) ends within this.
        ca_file: A PEM bundle servers' certificates must chain to; None: the system CAs.
        allow_hosts: Hosts the gateway may fetch from (a name, or ``*.domain`` for any
            name under it; case-insensitive), checked before any connection and at every
            redirect; empty: any host (the chart's egress policy is then the bound).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    ca_file: Path | None = None
    allow_hosts: tuple[str, ...] = ()

    def allows(self, host: str | None) -> bool:
        """Whether ``host`` is one the gateway may fetch from."""
        if not self.allow_hosts:
            return True
        name = (host or "").lower().rstrip(".")
        for pattern in self.allow_hosts:
            p = pattern.lower().rstrip(".")
            if name == p or (
                p.startswith("*.") and name.endswith(p[1:]) and len(name) > len(p) - 1
            ):
                return True
        return False


def _shown(uri: str) -> str:
    """The URI as messages show it: no query, no fragment, bounded."""
    parts = urlsplit(uri)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return shown if len(shown) <= 200 else shown[:197] + "..."


class _Spool:
    """A temporary file beside ``target``, hashed as it is written (blocking: run each
    call in a thread)."""

    def __init__(self, target: Path) -> None:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, blocks: list[bytes]) -> None:
        for block in blocks:
            self.file.write(block)
            self.hash.update(block)  # hashlib releases the GIL for large blocks
            self.size += len(block)

    def finish(self) -> str:
        """Syncs and closes the file; its sha256."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()

    def promote(self, target: Path) -> None:
        os.replace(self.path, target)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class ModelFetcher:
    """Downloads models over https or from object storage into a store's folder, verified.

    Args:
        config: Limits and trust.
        metrics: Where downloads are counted, by source and outcome (none: not counted).
    """

    def __init__(self, config: FetchConfig, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._context: ssl.SSLContext | None = None
        self.downloads = 0  # downloads started (tests check that pods share one)

    async def download(
        self, uri: str, sha256: str, target: Path, credentials: S3Credentials | None = None
    ) -> int:
        """Fetches ``uri`` into ``target`` (renamed into place) if its bytes hash to
        ``sha256``.

        Args:
            credentials: The object store an ``s3://`` URI is read from, and its keys
                (the pod's object-store Secret); required for one, unused otherwise.

        Returns:
            The model's size in bytes.

        Raises:
            ModelDigestMismatch: The bytes are not the model named (nothing is kept).
            ModelFetchFailed: The URI is refused, or the download failed or went past
                a limit (nothing is kept).
            OSError: The gateway could not write its store, or read its CA bundle (not
                the pod's fault).
        """
        source = "s3" if is_s3_uri(uri) else "https"
        try:
            size = await self._download(uri, sha256, target, credentials)
        except ModelFetchFailed as exc:
            if self.metrics is not None:
                self.metrics.model_fetches.labels(source, exc.reason).inc()
            raise
        if self.metrics is not None:
            self.metrics.model_fetches.labels(source, "Fetched").inc()
            self.metrics.model_fetched_bytes.labels(source).inc(size)
        return size

    async def _download(
        self, uri: str, sha256: str, target: Path, credentials: S3Credentials | None
    ) -> int:
        try:
            if not check_model_uri(uri):
                raise ValueError("no URI to fetch")
        except ValueError as exc:
            raise ModelFetchFailed(f"model URI: {exc}") from None
        shown = _shown(uri)
        s3 = is_s3_uri(uri)
        if s3:
            if credentials is None:
                raise ModelFetchFailed(
                    f"{shown}: an s3:// model is fetched with the pod's object-store "
                    "Secret, and the pod names none"
                )
            self._check_host(credentials.endpoint, shown, "the object store's endpoint ")
        else:
            self._check_host(uri, shown)
        self.downloads += 1
        try:
            async with asyncio.timeout(self.config.timeout_s):
                if s3:
                    assert credentials is not None
                    spool = await self._fetch_s3(parse_s3_uri(uri), credentials, shown, target)
                else:
                    context = await self._ssl()
                    spool = await self._fetch(uri, shown, context, target)
        except TimeoutError:
            raise ModelFetchFailed(
                f"{shown}: not fetched within {self.config.timeout_s:g} s (the gateway's limit)"
            ) from None
        try:
            got = await asyncio.to_thread(spool.finish)
            if got != sha256:
                raise ModelDigestMismatch(
                    f"{shown}: the bytes fetched do not have sha256 {sha256}; not kept"
                )
            await asyncio.to_thread(spool.promote, target)
        except BaseException:
            await asyncio.to_thread(spool.discard)
            raise
        return spool.size

    async def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            ca = str(self.config.ca_file) if self.config.ca_file is not None else None
            # Reading the CA files takes a while: not on the loop.
            self._context = await asyncio.to_thread(ssl.create_default_context, cafile=ca)
        return self._context

    async def _fetch(self, uri: str, shown: str, context: ssl.SSLContext, target: Path) -> _Spool:
        host = urlsplit(uri).hostname
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
        )
        trust = "the configured CA bundle" if self.config.ca_file else "the system CAs"
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context), timeout=timeout
            ) as session:
                url = uri
                for _ in range(MAX_REDIRECTS + 1):
                    async with session.get(url, allow_redirects=False) as resp:
                        if resp.status in _REDIRECTS:
                            url = self._redirect(resp, shown)
                            continue
                        if resp.status != 200:
                            raise ModelFetchFailed(f"{shown}: HTTP {resp.status}")
                        length = resp.content_length
                        if length is not None and length > self.config.max_bytes:
                            raise self._too_large(shown)
                        return await self._spool(
                            resp.content.iter_chunked(1024 * 1024), shown, target
                        )
                raise ModelFetchFailed(f"{shown}: more than {MAX_REDIRECTS} redirects")
        except aiohttp.ClientConnectorCertificateError:
            raise ModelFetchFailed(
                f"{shown}: the server's TLS certificate is not trusted ({trust})"
            ) from None
        except aiohttp.ClientSSLError:
            raise ModelFetchFailed(f"{shown}: the TLS handshake with {host} failed") from None
        except aiohttp.ClientConnectorError:
            raise ModelFetchFailed(f"{shown}: cannot connect to {host}") from None
        except aiohttp.ServerTimeoutError:
            raise ModelFetchFailed(
                f"{shown}: the server sent nothing for {READ_TIMEOUT_S:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise ModelFetchFailed(f"{shown}: the download failed ({type(exc).__name__})") from None

    def _redirect(self, resp: aiohttp.ClientResponse, shown: str) -> str:
        location = resp.headers.get("Location", "")
        if not location:
            raise ModelFetchFailed(f"{shown}: HTTP {resp.status} without a Location")
        target = str(resp.url.join(URL(location)))
        try:
            check_model_uri(target)
        except ValueError:
            raise ModelFetchFailed(
                f"{shown}: redirected to a location that is not https://"
            ) from None
        self._check_host(target, shown)
        return target

    def _check_host(self, uri: str, shown: str, what: str = "") -> None:
        host = urlsplit(uri).hostname
        if not self.config.allows(host):
            raise ModelFetchFailed(
                f"{shown}: {what}host {host!r} is not one the gateway fetches models from "
                "(--model-fetch-allow-host)"
            )

    def _too_large(self, shown: str) -> ModelFetchFailed:
        return ModelFetchFailed(
            f"{shown}: larger than {self.config.max_bytes} bytes (the gateway's limit); not kept"
        )

    async def _fetch_s3(
        self, location: S3Location, credentials: S3Credentials, shown: str, target: Path
    ) -> _Spool:
        # One GET streams the whole model: it may take as long as the whole download.
        store = s3_store(credentials, location.bucket, request_timeout_s=self.config.timeout_s)
        try:
            resp = await obstore.get_async(store, location.key)
            if int(resp.meta["size"]) > self.config.max_bytes:
                raise self._too_large(shown)  # before a byte of the body is read
            return await self._spool(resp.stream(min_chunk_size=_BATCH_BYTES), shown, target)
        except (BaseError, FileNotFoundError) as exc:
            # obstore's NotFoundError is a FileNotFoundError; its text (never shown) holds
            # the server's answer, of which only the error code is.
            raise ModelFetchFailed(f"{shown}: {explain_error(exc, credentials)}") from None

    async def _spool(self, blocks: AsyncIterator[bytes], shown: str, target: Path) -> _Spool:
        spool = await asyncio.to_thread(_Spool, target)
        try:
            received = 0
            batch: list[bytes] = []
            batched = 0
            async for block in blocks:
                received += len(block)
                if received > self.config.max_bytes:
                    raise self._too_large(shown)  # cut here: the rest is never read
                batch.append(block)
                batched += len(block)
                if batched >= _BATCH_BYTES:
                    await asyncio.to_thread(spool.write, batch)
                    batch, batched = [], 0
            if batch:
                await asyncio.to_thread(spool.write, batch)
        except BaseException:
            await asyncio.to_thread(spool.discard)
            raise
        return spool
