"""The part of the kubelet API a cell serves: ``/containerLogs`` for ``kubectl logs``.

The kube-apiserver proxies ``kubectl logs`` to the Node's ``daemonEndpoints`` port over
HTTPS, presenting its kubelet client certificate. Like a kubelet, this server
authenticates callers (a client certificate from the cluster's client CA, or a bearer
token checked with a TokenReview) and authorises them with a SubjectAccessReview for
``nodes/proxy`` on the pod's Node, which is what a kubelet asks for on
``/containerLogs``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from aiohttp import web
from kubernetes_asyncio import client

from parkfleet.kubeauth import User, may, review_token
from parkfleet.nodeagent.logs import LogStore
from parkfleet.tlsserve import serve, server_context

__all__ = ["KubeletServer", "User"]

log = logging.getLogger(__name__)


class KubeletServer:
    """HTTPS server for ``/containerLogs/{namespace}/{pod}/{container}``.

    Args:
        api: Kubernetes API client (for TokenReview and SubjectAccessReview).
        logs: The pods' log buffers.
        client_ca: PEM of the CA that signs the apiserver's kubelet client certificate.
        host: Address to listen on.
        port: Port (0 picks a free one).
        node_of: The Node of a pod (``namespace/name``), for the SubjectAccessReview.
    """

    def __init__(
        self,
        api: client.ApiClient,
        logs: LogStore,
        client_ca: bytes | None,
        host: str = "127.0.0.1",
        port: int = 0,
        node_of: Callable[[str], str] | None = None,
    ) -> None:
        self.api = api
        self.logs = logs
        self.client_ca = client_ca
        self.host = host
        self.port = port
        self.node_of = node_of or (lambda key: "")
        self._runner: web.AppRunner | None = None
        self.requests = 0
        self.denied = 0

    async def start(self) -> None:
        """Starts serving; :attr:`port` is the real port afterwards."""
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        app.router.add_get("/healthz", self._healthz)
        # The apiserver does not verify kubelet serving certificates unless it is given
        # --kubelet-certificate-authority; a per-process self-signed one is enough here.
        ctx = await asyncio.to_thread(server_context, self.host, "parkfleet-kubelet")
        if self.client_ca:
            ctx.load_verify_locations(cadata=self.client_ca.decode())
            ctx.verify_mode = ssl.CERT_OPTIONAL  # tokens are accepted too
        self._runner, self.port = await serve(app, self.host, self.port, ctx)
        log.info("kubelet API on https://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stops serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _authenticate(self, request: web.Request) -> User | None:
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport else None
        if peer:
            name = ""
            groups: list[str] = []
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        name = value
                    elif key == "organizationName":
                        groups.append(value)
            if name:
                return User(name, tuple(groups))
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return await review_token(self.api, auth[7:])
        return None

    async def _authorize(self, user: User, node: str) -> bool:
        attrs = client.V1ResourceAttributes(
            verb="get", resource="nodes", subresource="proxy", name=node
        )
        return await may(self.api, user, resource=attrs)

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        user = await self._authenticate(request)
        if user is None:
            self.denied += 1
            return web.Response(status=401, text="Unauthorized\n")
        key = f"{request.match_info['namespace']}/{request.match_info['pod']}"
        node = self.node_of(key)
        if not await self._authorize(user, node):
            self.denied += 1
            return web.Response(
                status=403, text=f"Forbidden: {user.name} may not get nodes/proxy\n"
            )
        if not self.logs.has(key):
            return web.Response(status=404, text=f"no log for pod {key} on this gateway\n")
        timestamps = request.query.get("timestamps") in ("1", "true")
        tail_s = request.query.get("tailLines")
        tail = int(tail_s) if tail_s and tail_s.lstrip("-").isdigit() else None
        if request.query.get("follow") not in ("1", "true"):
            text = "".join(
                f"{line}\n" for line in self.logs.lines(key, timestamps=timestamps, tail=tail)
            )
            return web.Response(text=text)
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        try:
            async for line in self.logs.follow(key, timestamps=timestamps, tail=tail):
                await resp.write(f"{line}\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp
