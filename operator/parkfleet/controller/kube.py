"""The operator's Kubernetes API client: one per process, from kubeconfig or in-cluster."""

from __future__ import annotations

from kubernetes_asyncio import client

from parkfleet.controller.metrics import METRICS
from parkfleet.kubeclient import connect
from parkfleet.kubemetrics import instrument

__all__ = ["api_client", "close_api_client"]

_client: client.ApiClient | None = None


async def api_client() -> client.ApiClient:
    """The shared client (created on first use)."""
    global _client
    if _client is None:
        # Kopf's own machinery has a client of its own; its user agent says "kopf".
        _client = instrument(await connect("parkfleet-operator"), METRICS.registry)
    return _client


async def close_api_client() -> None:
    """Closes the shared client (at shutdown)."""
    global _client
    if _client is not None:
        await _client.close()
        _client = None
