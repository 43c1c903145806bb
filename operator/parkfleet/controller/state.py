"""What the operator's handlers share while it runs: its metrics and its API client.

One :class:`OperatorState` per ``parkfleet.controller.run.run``; the handler modules'
``register`` functions bind it to their handlers, so nothing lives in module globals
and two operators in one process (tests, an embedder) do not see each other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kubernetes_asyncio import client

from parkfleet.controller.metrics import OperatorMetrics
from parkfleet.kubeclient import connect
from parkfleet.kubemetrics import instrument

__all__ = ["OperatorState"]


@dataclass
class OperatorState:
    """The operator's metrics and its Kubernetes API client (opened on first use).

    Attributes:
        metrics: The gauges and counters ``/metrics`` serves.
    """

    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    _api: client.ApiClient | None = field(default=None, init=False, repr=False)
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def api(self) -> client.ApiClient:
        """The operator's client, created on first use (from kubeconfig or in-cluster)."""
        if self._api is not None:
            return self._api
        async with self._opening:  # handlers run concurrently: open one client, not one each
            if self._api is None:
                # Kopf's own machinery has a client of its own; its user agent says "kopf".
                self._api = instrument(await connect("parkfleet-operator"), self.metrics.registry)
            return self._api

    async def close(self) -> None:
        """Closes the client (at shutdown); a later :meth:`api` opens a new one."""
        async with self._opening:
            if self._api is not None:
                await self._api.close()
                self._api = None
