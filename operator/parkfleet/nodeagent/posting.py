"""Kubernetes Events about pods, Nodes and pools, as ``kubectl describe`` shows them."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["EventPoster", "write_unread"]

log = logging.getLogger(__name__)


async def write_unread(call: Awaitable[Any]) -> None:
    """Awaits a write made with ``_preload_content=False``, dropping the answer unread.

    The client would build a model of the object the API sends back, which costs a busy
    gateway more CPU than the call itself; a write whose answer nobody reads skips that.

    Raises:
        ApiException: The API answered with an error status.
    """
    resp = cast(aiohttp.ClientResponse, await call)
    try:
        body = await resp.read()  # read to the end: the connection goes back to the pool
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=f"{resp.reason}: {body[:300]!r}")
    finally:
        resp.release()


class EventPoster:
    """Posts core/v1 Events from one component.

    Args:
        api: Kubernetes API client.
        component: ``source.component`` of the Events, e.g. ``parkfleet-gateway``.
        host: ``source.host`` (e.g. the shard).
    """

    def __init__(self, api: client.ApiClient, component: str, host: str = "") -> None:
        self.core = client.CoreV1Api(api)
        self.component = component
        self.host = host

    async def post(
        self, ref: Mapping[str, str], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Posts one Event about ``ref``; failures are logged, never raised."""
        now = datetime.datetime.now(datetime.UTC)
        namespace = ref.get("namespace") or "default"
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{ref['name']}.{uuid.uuid4().hex[:12]}", namespace=namespace
            ),
            involved_object=client.V1ObjectReference(
                api_version=ref.get("apiVersion"),
                kind=ref.get("kind"),
                name=ref.get("name"),
                namespace=ref.get("namespace"),
                uid=ref.get("uid"),
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=self.component, host=self.host or None),
            reporting_component=self.component,
            reporting_instance=self.host or self.component,
        )
        try:
            await write_unread(
                self.core.create_namespaced_event(namespace, body, _preload_content=False)
            )
        except ApiException as exc:
            log.warning("event %s on %s not posted: %s", reason, ref.get("name"), exc.reason)
