"""Kubernetes Events about pods, Nodes and pools, as ``kubectl describe`` shows them."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Mapping

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["EventPoster"]

log = logging.getLogger(__name__)


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
            await self.core.create_namespaced_event(namespace, body)
        except ApiException as exc:
            log.warning("event %s on %s not posted: %s", reason, ref.get("name"), exc.reason)
