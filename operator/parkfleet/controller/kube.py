"""The operator's Kubernetes API client: one per process, from kubeconfig or in-cluster."""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config

from parkfleet import __version__
from parkfleet.controller.metrics import METRICS
from parkfleet.kubemetrics import instrument

__all__ = ["api_client", "close_api_client"]

_client: client.ApiClient | None = None


async def api_client() -> client.ApiClient:
    """The shared client (created on first use)."""
    global _client
    if _client is None:
        cfg = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(client_configuration=cfg)
        _client = instrument(client.ApiClient(configuration=cfg), METRICS.registry)
        # Names this process in the API server's audit log (Kopf's own client says "kopf").
        _client.user_agent = f"parkfleet-operator/{__version__}"
    return _client


async def close_api_client() -> None:
    """Closes the shared client (at shutdown)."""
    global _client
    if _client is not None:
        await _client.close()
        _client = None
