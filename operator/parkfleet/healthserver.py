"""``/livez`` and ``/readyz`` for the kubelet's probes: the operator's and the gateway's
``--health-port``.

Two questions with two different answers, so that a probe never restarts a process for
what a restart cannot cure:

- ``/livez``: is the process's event loop answering? The handler runs on that loop and
  checks nothing else, so it fails only when the loop is stuck (or the process gone).
  Nothing outside the process (the API server, the cars) can make it fail: an API server
  outage restarts nothing.
- ``/readyz``: is the component ready to serve? The component's own check (the operator:
  Kopf started, its webhook listening, the API server answering it; a gateway shard: the
  car link listening, its cells registered, not stopping). 200 ``ok``, or 503 with one
  reason a line.

Plain HTTP without authentication, as a kubelet's own ``/healthz``: the answers say
nothing but ``ok`` or what is not ready, and the port is in no Service.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from parkfleet.tlsserve import serve

__all__ = ["HealthServer", "ReadinessCheck", "add_arguments"]

log = logging.getLogger(__name__)

# What is not ready yet, one reason each; empty: ready.
ReadinessCheck = Callable[[], Awaitable[Sequence[str]]]


def add_arguments(parser: argparse.ArgumentParser, readiness: str) -> None:
    """Adds ``--health-port`` and ``--health-addr`` to a command; ``readiness`` says what
    its ``/readyz`` checks."""
    parser.add_argument(
        "--health-port",
        type=int,
        default=None,
        help=f"serve the kubelet's probes here: /livez (the event loop answers) and /readyz "
        f"({readiness})",
    )
    parser.add_argument("--health-addr", default="0.0.0.0", help="address of the probes' server")


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` (see the module's docstring).

    Args:
        ready: The component's readiness check.
        host: Address to listen on.
        port: Port (0 picks a free one; :attr:`port` says which after :meth:`start`).
    """

    def __init__(self, ready: ReadinessCheck, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ready = ready
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where it serves (after :meth:`start`)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Starts serving."""
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        self._runner, self.port = await serve(app, self.host, self.port, None)
        log.info("probes on %s/livez and /readyz", self.url)

    async def stop(self) -> None:
        """Stops serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            reasons = list(await self.ready())
        except Exception as exc:  # a failing check is a reason, not a crash of the server
            log.warning("readiness check failed: %r", exc)
            reasons = [f"readiness check failed: {exc!r}"]
        if not reasons:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="".join(f"not ready: {r}\n" for r in reasons))
