"""The labels of the cluster's Namespaces, for the pools' ``spec.namespaceSelector``.

Every pod bound to a cell is admitted only if its namespace is one the cell's pool allows
(``pods.py``), however the pod got there: scheduled, or created with ``spec.nodeName`` set,
which skips the scheduler and the fleet taint. A watched cache allows a pod without an API
call; a namespace the cache has not seen yet (created a moment ago, or before the first
list) is read from the API, and so is one the cache would refuse, since a relabel may not
have reached the watch yet. A change of labels counts for the pods admitted after it
(allowing one at once, withdrawing one as soon as the watch brings the change).
"""

from __future__ import annotations

from collections.abc import Mapping

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import FleetPoolSpec
from parkfleet.backoff import Backoff
from parkfleet.nodeagent.watchloop import keep_watching

__all__ = ["NamespaceLabels"]

# The watch ends this often and the loop lists again (what a missed event would cost).
_WATCH_S = 300


class NamespaceLabels:
    """Namespace name → labels, kept by a list and watch (``get/list/watch`` namespaces).

    Args:
        api: Kubernetes API client.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self._labels: dict[str, dict[str, str]] = {}

    async def refusal(self, pool: FleetPoolSpec, namespace: str) -> str | None:
        """Why ``pool`` refuses a pod of ``namespace`` (see ``FleetPoolSpec.namespace_refusal``),
        or None when it allows it.

        Raises:
            ApiException: The namespace had to be read and could not be (not a 404).
        """
        if pool.namespace_selector is None:
            return None  # every namespace: nothing to look up
        cached = self._labels.get(namespace)
        if cached is not None and pool.namespace_refusal(namespace, cached) is None:
            return None
        # Not seen yet, or refused on labels a relabel may have changed since: ask the API.
        return pool.namespace_refusal(namespace, await self._read(namespace))

    async def _read(self, name: str) -> Mapping[str, str] | None:
        try:
            ns = await self.core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        # Not cached: the watch brings it, in order with the changes after it.
        return dict(ns.metadata.labels or {})

    async def run(self) -> None:
        """Lists the namespaces, then follows their changes, until cancelled."""
        await keep_watching("namespace watch", self._follow)

    async def _follow(self, retry: Backoff) -> None:
        listed = await self.core.list_namespace()
        self._labels = {ns.metadata.name: dict(ns.metadata.labels or {}) for ns in listed.items}
        retry.reset()
        w = watch.Watch()
        async with w.stream(
            self.core.list_namespace,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=_WATCH_S,
        ) as stream:
            async for event in stream:
                meta = event["object"].metadata
                if event["type"] == "DELETED":
                    self._labels.pop(meta.name, None)
                else:
                    self._labels[meta.name] = dict(meta.labels or {})
