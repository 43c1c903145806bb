"""``parkfleet certs revoke``: writes a revocation into the ConfigMap every shard watches.

The ConfigMap's format and the rule are ``parkfleet.revocations``'. Loaded only when the
command runs (``parkfleet.certs`` imports it lazily): the gateway's and the cars' code
read certificates with ``parkfleet.certs`` and drive no Kubernetes API.
"""

from __future__ import annotations

import time

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet import revocations
from parkfleet.kubeclient import connect

__all__ = ["revoke"]


async def revoke(
    car_id: str,
    configmap: str,
    *,
    undo: bool = False,
    kubeconfig: str | None = None,
    at: float | None = None,
) -> str:
    """Revokes every certificate of ``car_id`` issued until now (or lifts that).

    Args:
        car_id: The car.
        configmap: ``namespace/name`` of the revocation ConfigMap (created if missing).
        undo: Remove the car's revocation instead.
        kubeconfig: The fleet admin's kubeconfig (default: the usual lookup).
        at: The moment (unix seconds; default now).

    Returns:
        The value written ("" when undone).
    """
    namespace, _, name = configmap.partition("/")
    if not namespace or not name:
        raise ValueError(f"--configmap {configmap!r}: expected NAMESPACE/NAME")
    value = "" if undo else revocations.entry(time.time() if at is None else at)
    api = await connect("parkfleet-certs", kubeconfig)
    try:
        core = client.CoreV1Api(api)
        # A JSON merge patch sets (or, with null, removes) one key and leaves the others.
        body = {"data": {car_id: value or None}}
        try:
            await core.patch_namespaced_config_map(name, namespace, body)
        except ApiException as exc:
            if exc.status != 404 or undo:
                if exc.status == 404:
                    return ""
                raise
            cm = client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                data={car_id: value},
            )
            await core.create_namespaced_config_map(namespace, cm)
    finally:
        await api.close()
    return value
