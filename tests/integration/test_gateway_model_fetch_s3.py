"""A model a pod names by s3:// URI is fetched by the gateway itself, with the pod's
object-store credentials, verified and stored; cars then get it by hash over their link,
as any other.

A real S3 server on 127.0.0.1 (versitygw over a folder, ``parkfleet.devs3``) holds the
model; the gateway reads it with obstore. Wrong digests, wrong keys, missing objects and
buckets, an object past the size cap and an endpoint nobody listens on are refused with
messages that say what failed (never a key, never the library's text), and leave nothing
in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from parkfleet import devs3
from parkfleet.gateway import ArrayInput, MemorySink, modelfetch
from parkfleet.gateway.metrics import GatewayMetrics
from parkfleet.gateway.modelfetch import FetchConfig
from parkfleet.gateway.modelstore import ModelStore
from parkfleet.objectstore import S3Credentials
from parkfleet.taskport import ModelDigestMismatch, ModelFetchFailed
from tests.integration.car_env import CarEnv, digits, digits_task, start_env
from tests.loop_ticks import SLOW_HASH_S, LoopTicks, slow_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CAP = 1024 * 1024  # the size cap the gateways here run with
BUCKET = "models"
KEY = "digits/v1.onnx"
URI = f"s3://{BUCKET}/{KEY}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devs3.S3Server]:
    if not devs3.default_binary().exists():
        pytest.fail("versitygw is not built: run `make versitygw` (make test does)")
    server = devs3.start(tmp_path_factory.mktemp("s3"))
    folder = server.bucket(BUCKET)
    (folder / "digits").mkdir(exist_ok=True)
    (folder / KEY).write_bytes(digits().model_path.read_bytes())  # a file is an object
    (folder / "too-large.onnx").write_bytes(b"\0" * (2 * CAP))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def creds(s3: devs3.S3Server) -> S3Credentials:
    return S3Credentials(s3.endpoint, s3.access_key, s3.secret_key)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CarEnv]:
    e = await start_env(tmp_path, car_wait_s=30.0, model_fetch=FetchConfig(max_bytes=CAP))
    yield e
    await e.close()


def model() -> bytes:
    return digits().model_path.read_bytes()


def store(tmp_path: Path, **config: Any) -> ModelStore:
    config.setdefault("max_bytes", CAP)
    return ModelStore(tmp_path / "store", FetchConfig(**config), GatewayMetrics())


def leftovers(directory: Path) -> list[str]:
    """Files of the store's folder that are neither a model nor a bookkeeping folder."""
    return sorted(p.name for p in directory.iterdir() if p.name not in ("names", "meta"))


def fetches(models: ModelStore, outcome: str) -> float | None:
    assert models.fetcher.metrics is not None
    return models.fetcher.metrics.registry.get_sample_value(
        "parkfleet_gateway_model_fetches_total", {"source": "s3", "outcome": outcome}
    )


async def test_the_gateway_fetches_once_with_the_pods_keys_and_a_car_gets_it_by_hash(
    env: CarEnv, creds: S3Credentials
) -> None:
    sha = hashlib.sha256(model()).hexdigest()
    # Every pod of a job asks at once: one download serves them all.
    asks = [
        asyncio.create_task(env.gateway.resolve_model(sha256=sha, uri=URI, credentials=creds))
        for _ in range(20)
    ]
    infos = await asyncio.gather(*asks)
    assert env.gateway.models.fetcher.downloads == 1
    info = infos[0]
    assert (info.ref.sha256, info.ref.uri, info.ref.size_bytes) == (sha, "gateway:", len(model()))
    assert info.input_name == "input"
    assert (env.gateway.models.directory / sha).read_bytes() == model()
    registry = env.gateway.metrics.registry
    assert (
        registry.get_sample_value(
            "parkfleet_gateway_model_fetches_total", {"source": "s3", "outcome": "Fetched"}
        )
        == 1
    )
    assert registry.get_sample_value(
        "parkfleet_gateway_model_fetched_bytes_total", {"source": "s3"}
    ) == len(model())
    # Known now, by hash: a later pod downloads nothing, whatever it names and holds.
    await env.gateway.resolve_model(sha256=sha, uri=f"s3://{BUCKET}/elsewhere.onnx")
    assert env.gateway.models.fetcher.downloads == 1

    env.start_agent("car-1")
    await env.wait_eligible(1)
    x = digits().test_inputs()[:64]
    sink = MemorySink()
    await env.gateway.submit(digits_task("by-s3", info.ref, ArrayInput(x), len(x), sink))
    end = await env.events.ended("by-s3")
    assert end.kind == "succeeded", end
    assert sink.items() == list(range(len(x)))
    sent = registry.get_sample_value("parkfleet_gateway_model_bytes_sent_total")
    assert sent == len(model())  # over the car's link, from the store
    assert env.gateway.models.fetcher.downloads == 1  # and never from the object store again


async def test_a_wrong_digest_is_refused_and_nothing_is_kept(
    tmp_path: Path, creds: S3Credentials
) -> None:
    models = store(tmp_path)
    wrong = hashlib.sha256(b"some other model").hexdigest()
    with pytest.raises(ModelDigestMismatch) as err:
        await models.resolve(sha256=wrong, uri=URI, credentials=creds)
    assert str(err.value) == f"{URI}: the bytes fetched do not have sha256 {wrong}; not kept"
    assert hashlib.sha256(model()).hexdigest() not in str(err.value)  # nothing of the bytes
    assert err.value.reason == "ModelHashMismatch"
    assert leftovers(models.directory) == []
    assert fetches(models, "ModelHashMismatch") == 1


async def test_wrong_keys_and_missing_objects_are_refused_saying_which(
    tmp_path: Path, s3: devs3.S3Server, creds: S3Credentials
) -> None:
    models = store(tmp_path)
    sha = hashlib.sha256(model()).hexdigest()
    wrong_secret = S3Credentials(s3.endpoint, s3.access_key, "not-the-secret-key")
    wrong_id = S3Credentials(s3.endpoint, "nobody-here", "not-the-secret-key")
    cases = [
        (wrong_secret, URI, "the object store refused the keys"),
        (wrong_id, URI, "the object store knows no such access key"),
        (creds, f"s3://{BUCKET}/digits/v0.onnx", "no such object"),
        (creds, "s3://no-such-bucket/m.onnx", "no such bucket"),
    ]
    for credentials, uri, says in cases:
        with pytest.raises(ModelFetchFailed) as err:
            await models.resolve(sha256=sha, uri=uri, credentials=credentials)
        assert type(err.value) is ModelFetchFailed
        assert str(err.value).startswith(f"{uri}: {says}"), str(err.value)
        for secret in (s3.secret_key, "not-the-secret-key", s3.access_key):
            assert secret not in str(err.value)  # a key is never shown
        assert "<Error>" not in str(err.value)  # nor the server's answer
    assert leftovers(models.directory) == []
    assert fetches(models, "ModelFetchFailed") == len(cases)
    assert fetches(models, "Fetched") is None


async def test_an_object_past_the_cap_is_refused_before_its_body_is_read(
    tmp_path: Path, creds: S3Credentials
) -> None:
    models = store(tmp_path)
    uri = f"s3://{BUCKET}/too-large.onnx"
    with pytest.raises(ModelFetchFailed, match=f"larger than {CAP} bytes"):
        await models.resolve(sha256="1" * 64, uri=uri, credentials=creds)
    assert leftovers(models.directory) == []


async def test_an_endpoint_nobody_listens_on_is_reported(tmp_path: Path) -> None:
    models = store(tmp_path)
    with socket.socket() as s:  # a port nothing listens on (freed again at once)
        s.bind(("127.0.0.1", 0))
        closed = S3Credentials(f"http://127.0.0.1:{s.getsockname()[1]}", "id", "secret")
    with pytest.raises(ModelFetchFailed) as err:
        await models.resolve(sha256="2" * 64, uri=URI, credentials=closed)
    assert str(err.value) == f"{URI}: cannot connect to the object store at 127.0.0.1"
    assert leftovers(models.directory) == []


async def test_without_credentials_or_off_the_allowed_hosts_nothing_is_fetched(
    tmp_path: Path, creds: S3Credentials
) -> None:
    sha = hashlib.sha256(model()).hexdigest()
    models = store(tmp_path)
    with pytest.raises(ModelFetchFailed, match="fetched with the pod's object-store Secret"):
        await models.resolve(sha256=sha, uri=URI)
    elsewhere = store(tmp_path / "a", allow_hosts=("s3.example.com",))
    with pytest.raises(ModelFetchFailed) as err:
        await elsewhere.resolve(sha256=sha, uri=URI, credentials=creds)
    assert str(err.value) == (
        f"{URI}: the object store's endpoint host '127.0.0.1' is not one the gateway "
        "fetches models from (--model-fetch-allow-host)"
    )
    assert models.fetcher.downloads == elsewhere.fetcher.downloads == 0
    allowed = store(tmp_path / "b", allow_hosts=("127.0.0.1",))
    info = await allowed.resolve(sha256=sha, uri=URI, credentials=creds)
    assert info.ref.sha256 == sha


async def test_the_download_is_hashed_and_written_off_the_event_loop(
    tmp_path: Path, creds: S3Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = store(tmp_path)
    sha = hashlib.sha256(model()).hexdigest()
    monkeypatch.setattr(modelfetch, "hashlib", SimpleNamespace(sha256=slow_sha256))
    ticks = LoopTicks()
    started = time.perf_counter()
    await models.resolve(sha256=sha, uri=URI, credentials=creds)
    took = time.perf_counter() - started
    await ticks.stop()
    assert took >= SLOW_HASH_S  # the slow hash ran
    # Blocked, the loop would not have ticked for SLOW_HASH_S; generous for a busy box.
    assert ticks.largest_gap_s < SLOW_HASH_S / 2, ticks.largest_gap_s
