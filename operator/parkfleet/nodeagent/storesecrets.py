"""A pod's object-store credentials: the ``parkfleet.io/object-store`` Secret it names,
read from the pod's own namespace (never another) and kept briefly.

Every unit of a job names the same Secret: it is read once per
:data:`CACHE_S` seconds, not once per pod, so a rotated key is picked up within that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.objectstore import BadSecret, S3Credentials, credentials_from_secret

__all__ = ["CACHE_S", "StoreSecrets"]

CACHE_S = 30.0


class StoreSecrets:
    """Reads object-store Secrets for pods.

    Args:
        core: The Kubernetes core API.
        clock: Monotonic seconds.
    """

    def __init__(self, core: client.CoreV1Api, clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, S3Credentials]] = {}

    async def get(self, namespace: str, name: str) -> S3Credentials:
        """The credentials Secret ``name`` of ``namespace`` holds.

        Raises:
            BadSecret: No such Secret, the gateway may not read it, or it is not an
                object-store Secret (the message says which, never a value).
            ApiException: The API failed otherwise (retry).
        """
        now = self._clock()
        known = self._known.get((namespace, name))
        if known is not None and now - known[0] < CACHE_S:
            return known[1]
        try:
            secret = await self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise BadSecret(f"Secret {name}: no such Secret in namespace {namespace}") from None
            if exc.status == 403:
                raise BadSecret(
                    f"Secret {name}: the gateway may not read it in namespace {namespace} "
                    "(grant it with the chart's gateway.objectStore.secrets)"
                ) from None
            raise
        try:
            creds = credentials_from_secret({"type": secret.type, "data": secret.data})
        except BadSecret as exc:
            raise BadSecret(f"Secret {name} {exc}") from None
        self._known[(namespace, name)] = (now, creds)
        return creds
