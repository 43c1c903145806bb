"""A model a pod names by https:// URI is fetched by the gateway itself, verified and
stored; cars then get it by hash over their link, as any other.

A real HTTPS server on 127.0.0.1 (aiohttp, a certificate of a CA made here) serves the
model; the gateway trusts that CA through its configured bundle. Wrong digests, bodies
past the size cap, untrusted certificates, redirects off https, stalls and HTTP errors
are refused with messages that say what failed, and leave nothing in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from parkfleet.api import FleetPoolSpec
from parkfleet.certs import FleetCA
from parkfleet.gateway import ArrayInput, MemorySink, modelfetch
from parkfleet.gateway.modelfetch import FetchConfig
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.nodeagent.taskspecs import BadInput, TaskSpecs
from parkfleet.nodeagent.translate import translate
from parkfleet.taskport import ModelDigestMismatch, ModelFetchFailed
from tests.integration.car_env import CELL, POOL, CarEnv, digits, digits_task, start_env
from tests.loop_ticks import SLOW_HASH_S, LoopTicks, slow_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CAP = 1024 * 1024  # the size cap the gateways here run with
ENDLESS = 256 * CAP  # what the oversize stream would send if nobody hung up


@dataclass
class ModelServer:
    """An HTTPS server on 127.0.0.1 with a few model URLs, counting what it serves."""

    model: bytes
    ca_file: Path
    port: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    streamed: int = 0  # bytes the oversize stream wrote before the client went
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def _count(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def model_onnx(self, request: web.Request) -> web.Response:
        self._count(request)
        await self.release.wait()  # held until the test lets the (shared) download go
        return web.Response(body=self.model, content_type="application/octet-stream")

    async def declared_too_large(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(body=b"\0" * (2 * CAP))

    async def endless(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        resp = web.StreamResponse()  # chunked: no length to refuse it by
        await resp.prepare(request)
        block = b"\1" * 65536
        try:
            for _ in range(ENDLESS // len(block)):
                await resp.write(block)
                self.streamed += len(block)
        except (ConnectionError, RuntimeError):
            pass  # the gateway hung up: what this test wants
        finally:
            self.stream_ended.set()
        return resp

    async def redirect(self, request: web.Request) -> web.Response:
        self._count(request)
        raise web.HTTPFound(request.query["to"])

    async def stall(self, request: web.Request) -> web.Response:
        self._count(request)
        await asyncio.sleep(60)
        return web.Response(body=b"late")

    async def start(self, cert: Path, key: Path) -> None:
        app = web.Application()
        app.router.add_get("/models/digits.onnx", self.model_onnx)
        app.router.add_get("/declared-too-large", self.declared_too_large)
        app.router.add_get("/endless", self.endless)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/stall", self.stall)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ModelServer]:
    ca = FleetCA.create("model server test CA")
    pair = ca.issue_gateway(["127.0.0.1"])
    cert, key, ca_file = tmp_path / "srv.crt", tmp_path / "srv.key", tmp_path / "ca.crt"
    pair.save(cert, key)
    ca_file.write_bytes(ca.cert_pem)
    srv = ModelServer(model=digits().model_path.read_bytes(), ca_file=ca_file)
    await srv.start(cert, key)
    yield srv
    await srv.stop()


@pytest.fixture
async def env(tmp_path: Path, server: ModelServer) -> AsyncIterator[CarEnv]:
    e = await start_env(
        tmp_path,
        car_wait_s=30.0,
        model_fetch=FetchConfig(max_bytes=CAP, timeout_s=20.0, ca_file=server.ca_file),
    )
    yield e
    await e.close()


def store(tmp_path: Path, server: ModelServer, **config: Any) -> ModelStore:
    config.setdefault("ca_file", server.ca_file)
    config.setdefault("max_bytes", CAP)
    return ModelStore(tmp_path / "store", FetchConfig(**config))


def leftovers(directory: Path) -> list[str]:
    """Files of the store's folder that are neither a model nor a bookkeeping folder."""
    return sorted(p.name for p in directory.iterdir() if p.name not in ("names", "meta"))


async def test_the_gateway_fetches_once_verifies_and_a_car_gets_it_by_hash(
    env: CarEnv, server: ModelServer
) -> None:
    sha = hashlib.sha256(server.model).hexdigest()
    uri = server.url("/models/digits.onnx?X-Signature=secret")
    # Every pod of a job asks at once: one download serves them all.
    asks = [asyncio.create_task(env.gateway.resolve_model(sha256=sha, uri=uri)) for _ in range(20)]
    await asyncio.sleep(0.3)
    server.release.set()
    infos = await asyncio.gather(*asks)
    assert server.hits == {"/models/digits.onnx": 1}
    assert env.gateway.models.fetcher.downloads == 1
    info = infos[0]
    assert (info.ref.sha256, info.ref.uri, info.ref.size_bytes) == (
        sha,
        "gateway:",  # the car is told the gateway, never the URI
        len(server.model),
    )
    assert info.input_name == "input"
    assert (env.gateway.models.directory / sha).read_bytes() == server.model
    # Known now: a later pod, whatever URI it names, downloads nothing.
    await env.gateway.resolve_model(sha256=sha, uri=server.url("/models/other.onnx"))
    assert server.hits == {"/models/digits.onnx": 1}

    env.start_agent("car-1")
    await env.wait_eligible(1)
    x = digits().test_inputs()[:64]
    sink = MemorySink()
    await env.gateway.submit(digits_task("by-uri", info.ref, ArrayInput(x), len(x), sink))
    end = await env.events.ended("by-uri")
    assert end.kind == "succeeded", end
    assert sink.items() == list(range(len(x)))
    sent = env.gateway.metrics.registry.get_sample_value("parkfleet_gateway_model_bytes_sent_total")
    assert sent == len(server.model)  # over the car's link, from the store
    assert server.hits == {"/models/digits.onnx": 1}  # and never from the server again


async def test_a_pod_naming_a_uri_gets_a_task_by_hash_or_fails_naming_the_field(
    env: CarEnv, server: ModelServer, tmp_path: Path
) -> None:
    server.release.set()
    (tmp_path / "data" / "default" / "in").mkdir(parents=True)  # namespace default's area
    np.save(tmp_path / "data" / "default" / "in" / "x.npy", digits().test_inputs()[:10])
    good = hashlib.sha256(server.model).hexdigest()

    def pod(sha: str) -> dict[str, Any]:
        env_vars = {
            "PARKFLEET_MODEL_URI": server.url("/models/digits.onnx"),
            "PARKFLEET_MODEL_SHA256": sha,
            "PARKFLEET_INPUT": "in/x.npy",
        }
        return {
            "metadata": {"name": "p", "namespace": "default", "uid": f"uid-{sha[:8]}"},
            "spec": {
                "containers": [
                    {
                        "name": "infer",
                        "image": "parkfleet.io/runtime/onnxruntime:1",
                        "env": [{"name": k, "value": v} for k, v in env_vars.items()],
                    }
                ]
            },
        }

    api = client.ApiClient()
    try:
        specs = TaskSpecs(api, env.gateway, tmp_path / "data")
        pool = FleetPoolSpec(name=POOL)
        p = pod(good)
        prepared = await specs.prepare(p, CELL, translate(p, pool.runtimes), pool)
        assert (prepared.spec.model.sha256, prepared.spec.model.uri) == (good, "gateway:")
        p = pod("0" * 64)
        with pytest.raises(BadInput) as err:
            await specs.prepare(p, CELL, translate(p, pool.runtimes), pool)
    finally:
        await api.close()
    assert err.value.reason == "ModelHashMismatch"
    assert err.value.message.startswith("spec.containers[0].env[PARKFLEET_MODEL_URI]: ")


async def test_the_download_is_hashed_and_written_off_the_event_loop(
    tmp_path: Path, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.release.set()
    models = store(tmp_path, server)
    sha = hashlib.sha256(server.model).hexdigest()
    monkeypatch.setattr(modelfetch, "hashlib", SimpleNamespace(sha256=slow_sha256))
    ticks = LoopTicks()
    started = time.perf_counter()
    await models.resolve(sha256=sha, uri=server.url("/models/digits.onnx"))
    took = time.perf_counter() - started
    await ticks.stop()
    assert took >= SLOW_HASH_S  # the slow hash ran
    # Blocked, the loop would not have ticked for SLOW_HASH_S; generous for a busy box.
    assert ticks.largest_gap_s < SLOW_HASH_S / 2, ticks.largest_gap_s


async def test_a_wrong_digest_is_refused_and_nothing_is_kept(
    tmp_path: Path, server: ModelServer
) -> None:
    server.release.set()
    models = store(tmp_path, server)
    wrong = hashlib.sha256(b"some other model").hexdigest()
    uri = server.url("/models/digits.onnx?token=do-not-show")
    with pytest.raises(ModelDigestMismatch) as err:
        await models.resolve(sha256=wrong, uri=uri)
    message = str(err.value)
    assert message == (
        f"{server.url('/models/digits.onnx')}: the bytes fetched do not have sha256 "
        f"{wrong}; not kept"
    )
    assert hashlib.sha256(server.model).hexdigest() not in message  # nothing of the bytes
    assert err.value.reason == "ModelHashMismatch"
    assert leftovers(models.directory) == []


async def test_an_oversize_body_is_cut_at_the_cap(tmp_path: Path, server: ModelServer) -> None:
    models = store(tmp_path, server)
    with pytest.raises(ModelFetchFailed, match=f"larger than {CAP} bytes"):
        await models.resolve(sha256="1" * 64, uri=server.url("/endless"))
    async with asyncio.timeout(30):
        await server.stream_ended.wait()
    # The gateway stopped reading at the cap and hung up; what the server got out is that
    # plus what the sockets' buffers took (about 10 MiB here), far from all of it.
    assert server.streamed < ENDLESS // 4, server.streamed
    # A length past the cap is refused before its body is read.
    with pytest.raises(ModelFetchFailed, match=f"larger than {CAP} bytes"):
        await models.resolve(sha256="2" * 64, uri=server.url("/declared-too-large"))
    assert leftovers(models.directory) == []


async def test_a_certificate_the_gateway_does_not_trust_is_refused(
    tmp_path: Path, server: ModelServer
) -> None:
    server.release.set()
    other = tmp_path / "other-ca.crt"
    other.write_bytes(FleetCA.create("some other CA").cert_pem)
    sha = hashlib.sha256(server.model).hexdigest()
    for ca_file, trusted in ((other, "the configured CA bundle"), (None, "the system CAs")):
        models = store(tmp_path, server, ca_file=ca_file)
        with pytest.raises(ModelFetchFailed) as err:
            await models.resolve(sha256=sha, uri=server.url("/models/digits.onnx"))
        assert str(err.value) == (
            f"{server.url('/models/digits.onnx')}: the server's TLS certificate is not "
            f"trusted ({trusted})"
        )
    assert server.hits == {}  # refused in the handshake, before any request


async def test_redirects_are_followed_only_to_https(tmp_path: Path, server: ModelServer) -> None:
    server.release.set()
    models = store(tmp_path, server)
    sha = hashlib.sha256(server.model).hexdigest()
    plain = f"http://127.0.0.1:{server.port}/models/digits.onnx"
    with pytest.raises(ModelFetchFailed, match="redirected to a location that is not https://"):
        await models.resolve(sha256=sha, uri=server.url(f"/redirect?to={plain}"))
    assert "/models/digits.onnx" not in server.hits
    info = await models.resolve(sha256=sha, uri=server.url("/redirect?to=/models/digits.onnx"))
    assert info.ref.sha256 == sha
    assert server.hits["/models/digits.onnx"] == 1


async def test_a_stalled_server_and_http_errors_are_reported(
    tmp_path: Path, server: ModelServer
) -> None:
    models = store(tmp_path, server, timeout_s=1.0)
    with pytest.raises(ModelFetchFailed, match=r"not fetched within 1 s \(the gateway's limit\)"):
        await models.resolve(sha256="3" * 64, uri=server.url("/stall"))
    with pytest.raises(ModelFetchFailed, match=r"/nothing-here: HTTP 404$"):
        await models.resolve(sha256="3" * 64, uri=server.url("/nothing-here"))
    with socket.socket() as s:  # a port nothing listens on (freed again at once)
        s.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{s.getsockname()[1]}/m.onnx"
    with pytest.raises(ModelFetchFailed, match=r"cannot connect to 127\.0\.0\.1$"):
        await models.resolve(sha256="3" * 64, uri=closed)
    assert leftovers(models.directory) == []


async def test_a_uri_is_refused_without_a_digest_or_off_https(
    tmp_path: Path, server: ModelServer
) -> None:
    models = store(tmp_path, server)
    with pytest.raises(ModelFetchFailed, match="needs the model's sha256"):
        await models.resolve(uri=server.url("/models/digits.onnx"))
    # (s3:// is a source, with credentials: tests/integration/test_gateway_model_fetch_s3.py;
    # a prefix is not a model.)
    for uri in ("file:///etc/hostname", f"http://127.0.0.1:{server.port}/x", "s3://models/"):
        with pytest.raises(ModelFetchFailed, match=r"^model URI: "):
            await models.resolve(sha256="4" * 64, uri=uri)
    assert server.hits == {}


async def test_only_allowed_hosts_are_fetched_from_even_after_a_redirect(
    tmp_path: Path, server: ModelServer
) -> None:
    server.release.set()
    sha = hashlib.sha256(server.model).hexdigest()
    elsewhere = store(tmp_path / "a", server, allow_hosts=("models.example.com", "*.example.org"))
    with pytest.raises(ModelFetchFailed, match=r"host '127\.0\.0\.1' is not one"):
        await elsewhere.resolve(sha256=sha, uri=server.url("/models/digits.onnx"))
    assert server.hits == {}  # refused before any connection
    allowed = store(tmp_path / "b", server, allow_hosts=("127.0.0.1",))
    # An allowed host redirecting to one that is not: refused at the redirect.
    other = f"https://localhost:{server.port}/models/digits.onnx"
    with pytest.raises(ModelFetchFailed, match="host 'localhost' is not one"):
        await allowed.resolve(sha256=sha, uri=server.url(f"/redirect?to={other}"))
    assert "/models/digits.onnx" not in server.hits
    info = await allowed.resolve(sha256=sha, uri=server.url("/models/digits.onnx"))
    assert info.ref.sha256 == sha


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("models.example.com", True),
        ("MODELS.example.com.", True),
        ("a.example.org", True),
        ("a.b.example.org", True),
        ("example.org", False),  # *.domain is the names under it, not the domain itself
        ("evilexample.org", False),
        ("models.example.com.evil.net", False),
        ("", False),
    ],
)
def test_the_allow_list_matches_names_and_wildcard_domains(host: str, allowed: bool) -> None:
    config = FetchConfig(allow_hosts=("models.example.com", "*.example.org"))
    assert config.allows(host) is allowed
    assert FetchConfig().allows(host)  # no list: any host
