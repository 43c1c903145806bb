"""``/metrics`` for callers Kubernetes allows: the gateway's and the operator's
``--metrics-auth=kubernetes``.

As controller-runtime's secure metrics and kube-rbac-proxy serve theirs: over HTTPS (a
self-signed certificate, so that the bearer token is never sent in clear), each request's
bearer token authenticated with a TokenReview and authorised with a SubjectAccessReview
for ``get`` on the non-resource URL ``/metrics`` (RBAC: ``nonResourceURLs: [/metrics]``).
401 without a valid token, 403 without the right. Verdicts are cached per token
(:class:`parkfleet.kubeauth.NonResourceGuard`), so Prometheus' scrapes cost about two
API calls per token a minute.

All of it on the process's event loop (aiohttp, async API calls); the exposition text is
rendered in a worker thread, as ``prometheus_client``'s own server renders it.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from parkfleet.kubeauth import NonResourceGuard
from parkfleet.tlsserve import serve, server_context

__all__ = ["METRICS_AUTH_CHOICES", "METRICS_AUTH_HELP", "MetricsServer"]

log = logging.getLogger(__name__)

# --metrics-auth: "none" serves plain HTTP to anyone who reaches the port (local runs).
METRICS_AUTH_CHOICES = ("none", "kubernetes")
METRICS_AUTH_HELP = (
    "kubernetes: /metrics over HTTPS, only for bearer tokens allowed get on the non-resource "
    "URL /metrics (TokenReview, SubjectAccessReview); none: plain HTTP to anyone"
)


class MetricsServer:
    """Serves ``registry`` at ``/metrics`` over HTTPS to the callers ``guard`` lets through.

    Args:
        registry: What to expose.
        guard: Who may read it.
        host: Address to listen on.
        port: Port (0 picks a free one; :attr:`port` says which after :meth:`start`).
    """

    def __init__(
        self, registry: CollectorRegistry, guard: NonResourceGuard, host: str, port: int = 0
    ) -> None:
        self.registry = registry
        self.guard = guard
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where it serves (after :meth:`start`)."""
        return f"https://{self.host}:{self.port}{self.guard.path}"

    async def start(self) -> None:
        """Starts serving."""
        app = web.Application()
        app.router.add_get(self.guard.path, self._metrics)
        ctx = await asyncio.to_thread(server_context, self.host, "parkfleet-metrics")
        self._runner, self.port = await serve(app, self.host, self.port, ctx)
        log.info("metrics on %s (TokenReview and SubjectAccessReview)", self.url)

    async def stop(self) -> None:
        """Stops serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        verdict = await self.guard.check(request.headers.get("Authorization", ""))
        if verdict.status != 200:
            challenge = {"WWW-Authenticate": 'Bearer realm="parkfleet"'}
            return web.Response(
                status=verdict.status,
                text=f"{HTTPStatus(verdict.status).phrase}: {verdict.reason}\n",
                headers=challenge if verdict.status == 401 else None,
            )
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})
