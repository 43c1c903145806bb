"""Kubernetes API request metrics: verbs and resources from path templates, codes counted.

The request layer below ``ApiClient`` is replaced by a stub answering canned responses,
so these stay unit tests; the end-to-end test scrapes the real counts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from parkfleet.kubemetrics import describe, instrument


@pytest.mark.parametrize(
    ("method", "template", "params", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/{namespace}/pods/{name}", {}, [], ("get", "pods")),
        ("GET", "/api/v1/namespaces/{namespace}/pods", {}, [], ("list", "pods")),
        ("GET", "/api/v1/pods", {}, [("watch", True)], ("watch", "pods")),
        ("GET", "/api/v1/namespaces/{namespace}/pods/{name}/log", {}, [], ("get", "pods/log")),
        ("GET", "/api/v1/namespaces/{name}", {}, [], ("get", "namespaces")),
        ("GET", "/api/v1/namespaces", {}, [], ("list", "namespaces")),
        (
            "PATCH",
            "/api/v1/namespaces/{namespace}/pods/{name}/status",
            {},
            [],
            ("patch", "pods/status"),
        ),
        ("PUT", "/api/v1/nodes/{name}/status", {}, [], ("update", "nodes/status")),
        ("POST", "/apis/batch/v1/namespaces/{namespace}/jobs", {}, [], ("create", "jobs")),
        (
            "PATCH",
            "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            {},
            [],
            ("patch", "leases"),
        ),
        ("DELETE", "/api/v1/nodes/{name}", {}, [], ("delete", "nodes")),
        ("DELETE", "/api/v1/namespaces/{namespace}/pods", {}, [], ("deletecollection", "pods")),
        (
            "GET",
            "/apis/{group}/{version}/{plural}/{name}",
            {"group": "parkfleet.io", "plural": "fleetpools", "name": "x"},
            [],
            ("get", "fleetpools"),
        ),
        (
            "GET",
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
            {"plural": "inferencejobs"},
            {"watch": "true"},
            ("watch", "inferencejobs"),
        ),
    ],
)
def test_verb_and_resource_come_from_the_template(
    method: str, template: str, params: dict[str, str], query: Any, expected: tuple[str, str]
) -> None:
    assert describe(method, template, params, query) == expected


class _Response:
    """What the REST layer hands back: a status, a body and headers."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.reason = "OK" if status < 400 else "Error"
        self.data = json.dumps(body).encode()

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return "application/json" if name.lower() == "content-type" else default

    def getheaders(self) -> dict[str, str]:
        return {"content-type": "application/json"}


@pytest.fixture
async def api() -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration(host="https://127.0.0.1:1")
    async with client.ApiClient(configuration=cfg) as api_client:
        yield api_client


async def test_instrumented_client_counts_successes_and_errors(api: client.ApiClient) -> None:
    answers = iter(
        [
            _Response(200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}}),
            _Response(200, {"kind": "PodList", "apiVersion": "v1", "items": []}),
        ]
    )

    async def stub_request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if "missing" in url:
            raise ApiException(http_resp=_Response(404, {"kind": "Status"}))
        if "broken" in url:
            raise OSError("connection reset")
        return next(answers)

    api.request = stub_request  # type: ignore[method-assign]
    registry = CollectorRegistry()
    instrument(api, registry)
    core = client.CoreV1Api(api)
    pod = await core.read_namespaced_pod("p", "ns")
    assert pod.metadata.name == "p"
    await core.list_namespaced_pod("ns")
    with pytest.raises(ApiException):
        await core.read_namespaced_pod("missing", "ns")
    with pytest.raises(OSError, match="connection reset"):
        await core.delete_namespaced_pod("broken", "ns")

    def count(verb: str, resource: str, code: str) -> float | None:
        return registry.get_sample_value(
            "parkfleet_kube_api_requests_total",
            {"verb": verb, "resource": resource, "code": code},
        )

    assert count("get", "pods", "200") == 1
    assert count("list", "pods", "200") == 1
    assert count("get", "pods", "404") == 1
    assert count("delete", "pods", "error") == 1
    assert (
        registry.get_sample_value(
            "parkfleet_kube_api_request_duration_seconds_count", {"verb": "get", "resource": "pods"}
        )
        == 2
    )


async def test_watch_requests_are_counted_as_watch(api: client.ApiClient) -> None:
    class _Stream(_Response):
        """A watch response that ends at once (no events)."""

        def __init__(self) -> None:
            super().__init__(200, {})
            self.content = self

        async def readline(self) -> bytes:
            return b""

        def release(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def stub_request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        return _Stream()

    api.request = stub_request  # type: ignore[method-assign]
    registry = CollectorRegistry()
    instrument(api, registry)
    w = watch.Watch()
    # With a server-side timeout the stream ends at the first empty read.
    stream = w.stream(client.CoreV1Api(api).list_pod_for_all_namespaces, timeout_seconds=1)
    events = [e async for e in stream]
    assert events == []
    value = registry.get_sample_value(
        "parkfleet_kube_api_requests_total", {"verb": "watch", "resource": "pods", "code": "200"}
    )
    assert value is not None
    assert value >= 1
