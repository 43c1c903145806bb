"""Kubernetes API requests, counted by verb, resource and HTTP code.

One implementation for every process that talks to the API server through
``kubernetes_asyncio`` (the operator's client and each gateway's node agent):
:func:`instrument` wraps one ``ApiClient`` instance so that every request, watches
included, is counted and timed. Labels are bounded: the verb (get, list, watch, create,
update, patch, delete, deletecollection), the resource (plural, with a subresource such
as ``pods/status``) and the code (the HTTP status, or ``error`` when no response came)
- never an object's name or namespace.

Kopf's own requests (its watches and the status patches it writes) use Kopf's HTTP
client, not this one, and are not counted here.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["KubeApiMetrics", "describe", "instrument"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# call_api knows the request's path template (bounded); request() knows its HTTP
# status. The verb and resource travel from one to the other in the task's context.
_CURRENT: ContextVar[tuple[str, str] | None] = ContextVar("parkfleet_kube_request", default=None)

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, KubeApiMetrics] = (
    weakref.WeakKeyDictionary()
)


class KubeApiMetrics:
    """The request counter and latency histogram, registered once per registry.

    Use :meth:`of` rather than the constructor so that two clients of one process
    share the same metrics.

    Args:
        registry: Where to register.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "parkfleet_kube_api_requests_total",
            "Kubernetes API requests by verb, resource and HTTP code (error: no response).",
            ["verb", "resource", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "parkfleet_kube_api_request_duration_seconds",
            "Time to a Kubernetes API response (for watches: to the response headers).",
            ["verb", "resource"],
            buckets=_BUCKETS,
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> KubeApiMetrics:
        """The metrics of ``registry``, created on first use."""
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = _BY_REGISTRY[registry] = cls(registry)
        return found

    def observe(self, verb: str, resource: str, code: str, seconds: float) -> None:
        """Counts one request."""
        self.requests.labels(verb, resource, code).inc()
        self.duration.labels(verb, resource).observe(seconds)


def describe(
    method: str,
    path_template: str,
    path_params: Mapping[str, Any] | None = None,
    query_params: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """The Kubernetes verb and resource of a request, from its path *template*.

    Args:
        method: HTTP method.
        path_template: e.g. ``/api/v1/namespaces/{namespace}/pods/{name}/status``.
        path_params: Values of the template's parameters; only ``{plural}`` (custom
            objects) is read, since a plural is bounded where a name is not.
        query_params: The query (``watch=true`` makes a GET a watch).

    Returns:
        ``(verb, resource)``, e.g. ``("patch", "pods/status")``.
    """
    parts = [p for p in path_template.split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    if len(parts) >= 3 and parts[0] == "namespaces" and parts[1] == "{namespace}":
        parts = parts[2:]
    plural = str((path_params or {}).get("plural", "")) or "{plural}"
    parts = [plural if p == "{plural}" else p for p in parts]
    named = len(parts) >= 2 and parts[1] == "{name}"
    resource = parts[0] if parts else ""
    if named and len(parts) >= 3:
        resource = f"{resource}/{parts[2]}"
    query = dict(query_params.items() if isinstance(query_params, Mapping) else query_params or ())
    method = method.upper()
    verb: str
    if method == "GET":
        if str(query.get("watch", "")).lower() in ("true", "1"):
            verb = "watch"
        else:
            verb = "get" if named else "list"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return verb, resource or "unknown"


def instrument(api: client.ApiClient, registry: CollectorRegistry) -> client.ApiClient:
    """Counts and times every request ``api`` makes, on ``registry``.

    Wraps the instance's ``call_api`` (which sees the path template) and ``request``
    (which sees the response); other ``ApiClient`` instances are untouched.

    Args:
        api: The client (used by ``CoreV1Api(api)`` etc. and by ``watch.Watch``).
        registry: Where :class:`KubeApiMetrics` live.

    Returns:
        ``api`` itself.
    """
    metrics = KubeApiMetrics.of(registry)
    call_api = api.call_api
    request = api.request

    async def counted_call_api(
        resource_path: str,
        method: str,
        path_params: Any = None,
        query_params: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        token = _CURRENT.set(describe(method, resource_path, path_params, query_params))
        try:
            return await call_api(resource_path, method, path_params, query_params, *args, **kwargs)
        finally:
            _CURRENT.reset(token)

    async def timed_request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        verb, resource = _CURRENT.get() or (method.lower(), "unknown")
        start = time.perf_counter()
        code = "error"
        try:
            response = await request(method, url, *args, **kwargs)
            code = str(response.status)
            return response
        except ApiException as exc:
            code = str(exc.status) if exc.status else "error"
            raise
        finally:
            metrics.observe(verb, resource, code, time.perf_counter() - start)

    # Instance attributes shadow the class's methods for this client only.
    api.call_api = counted_call_api  # type: ignore[method-assign]
    api.request = timed_request  # type: ignore[method-assign]
    return api
