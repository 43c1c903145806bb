"""The kubelet's probes (``parkfleet.healthserver``): ``/livez`` is the event loop
answering, ``/readyz`` the component ready to serve; the two fail for different reasons.

The gateway and the operator run as real processes; the operator's "no API server" is a
kubeconfig naming a loopback port nothing listens on. Ready operators and gateway shards
with a node agent are in ``tests/e2e/test_probes.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from parkfleet import cli
from parkfleet.certs import FleetCA, KeyPair, car_paths
from parkfleet.devstack import free_port
from parkfleet.gateway.command import GatewayReadiness
from parkfleet.healthserver import HealthServer
from tests.carlink_probe import ProbeCar

pytestmark = pytest.mark.integration


async def get(url: str, timeout_s: float = 10.0) -> tuple[int, str]:
    """``GET url``: the status and the body."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.text()


async def until_status(url: str, status: int, timeout_s: float = 60.0) -> str:
    """Polls ``url`` until it answers ``status``; returns that answer's body."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            got, body = await get(url, 5.0)
            if got == status:
                return body
            last = f"{got}: {body}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} in {timeout_s} s; last: {last}")


@pytest.fixture
async def health() -> AsyncIterator[tuple[HealthServer, list[str]]]:
    """A health server whose readiness is a list of reasons the test edits."""
    reasons: list[str] = ["warming up", "waiting for a friend"]

    async def check() -> list[str]:
        return reasons

    server = HealthServer(check)
    await server.start()
    try:
        yield server, reasons
    finally:
        await server.stop()


async def test_readyz_says_what_is_not_ready_while_livez_answers(
    health: tuple[HealthServer, list[str]],
) -> None:
    server, reasons = health
    assert await get(f"{server.url}/livez") == (200, "ok\n")
    assert await get(f"{server.url}/readyz") == (
        503,
        "not ready: warming up\nnot ready: waiting for a friend\n",
    )
    reasons.clear()
    assert await get(f"{server.url}/readyz") == (200, "ok\n")
    assert (await get(f"{server.url}/healthz"))[0] == 404


async def test_a_failing_readiness_check_is_not_ready_not_a_crash() -> None:
    async def broken() -> list[str]:
        raise RuntimeError("a bug")

    server = HealthServer(broken)
    await server.start()
    try:
        status, body = await get(f"{server.url}/readyz")
        assert status == 503
        assert "readiness check failed: RuntimeError('a bug')" in body
        assert await get(f"{server.url}/livez") == (200, "ok\n")
    finally:
        await server.stop()


@pytest.fixture
def server_on_its_own_loop() -> Iterator[tuple[HealthServer, asyncio.AbstractEventLoop]]:
    """A health server on an event loop of its own thread, as in a process of its own."""
    loop = asyncio.new_event_loop()

    async def ready() -> list[str]:
        return []

    server = HealthServer(ready)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_livez_fails_while_the_event_loop_is_stuck(
    server_on_its_own_loop: tuple[HealthServer, asyncio.AbstractEventLoop],
) -> None:
    server, loop = server_on_its_own_loop
    assert await get(f"{server.url}/livez") == (200, "ok\n")
    unstuck = threading.Event()
    # Blocking code on the server's loop: nothing else runs there until it returns.
    loop.call_soon_threadsafe(unstuck.wait, 30)
    try:
        with pytest.raises(TimeoutError):
            await get(f"{server.url}/livez", timeout_s=1.0)
    finally:
        unstuck.set()
    assert await get(f"{server.url}/livez") == (200, "ok\n")


async def test_gateway_readiness_reasons() -> None:
    ready = GatewayReadiness(node_agent=True)
    assert await ready.reasons() == [
        "the car link is not listening yet",
        "the node agent has not registered this shard's cells yet",
    ]
    ready.listening = ready.registered = True
    assert await ready.reasons() == []
    ready.stopping = True
    assert await ready.reasons() == ["stopping (new cars go to the other shards)"]
    assert await GatewayReadiness(node_agent=False, listening=True).reasons() == []


async def test_gateway_process_is_ready_once_listening_and_not_while_stopping(
    tmp_path: Path,
) -> None:
    certs = tmp_path / "certs"
    assert cli.main(["certs", "init", "--dir", str(certs)]) == 0
    assert cli.main(["certs", "gateway", "--dir", str(certs), "--host", "127.0.0.1"]) == 0
    assert (
        cli.main(["certs", "car", "--dir", str(certs), "--car-id", "c1", "--attr", "pool=eu"]) == 0
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parkfleet.cli", "gateway",
        "--listen", "127.0.0.1:0", "--certs", str(certs), "--models", str(tmp_path / "models"),
        "--health-port", "0", "--health-addr", "127.0.0.1", "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("probes on http://127.0.0.1:"), line
        url = line.split()[-1]
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        assert await get(f"{url}/readyz") == (200, "ok\n")
        assert await get(f"{url}/livez") == (200, "ok\n")
        cert, key = car_paths(certs, "c1")
        pair = KeyPair(cert.read_bytes(), key.read_bytes())
        async with ProbeCar(line.split()[-1], FleetCA.load(certs).cert_pem, pair) as car:
            await car.connect()
            # The open stream keeps the gateway stopping for a while (its grace period):
            # meanwhile it is alive, and not ready for new cars.
            proc.send_signal(signal.SIGTERM)
            body = await until_status(f"{url}/readyz", 503, timeout_s=30)
            assert body == "not ready: stopping (new cars go to the other shards)\n"
            assert await get(f"{url}/livez") == (200, "ok\n")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def dead_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig whose API server is a loopback port nothing listens on."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: gone, cluster: {{server: 'https://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: none}}]\n"
        "contexts: [{name: c, context: {cluster: gone, user: u}}]\n"
    )
    return kubeconfig


async def terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 30 s, unless it has already exited."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_operator_without_an_api_server_is_alive_and_not_ready(tmp_path: Path) -> None:
    kubeconfig = dead_kubeconfig(tmp_path)
    port = free_port()
    env = {"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parkfleet.cli", "operator",
        "--health-port", str(port), "--health-addr", "127.0.0.1",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await until_status(f"{url}/livez", 200, timeout_s=30)
        status, body = await get(f"{url}/readyz")
        assert status == 503
        assert "not ready: the API server does not answer the operator: " in body
        assert "Cannot connect to host 127.0.0.1:" in body
        # Still alive: an outage of the API server is no reason for a restart.
        await asyncio.sleep(2)
        assert await get(f"{url}/livez") == (200, "ok\n")
        assert proc.returncode is None
    finally:
        await terminate(proc)


async def test_gateway_without_an_api_server_is_alive_and_not_ready(tmp_path: Path) -> None:
    # A shard that starts while the API server is away (down, restarting, or answering
    # 429 while its storage initialises) waits, not ready, instead of exiting.
    kubeconfig = dead_kubeconfig(tmp_path)
    certs = tmp_path / "certs"
    assert cli.main(["certs", "init", "--dir", str(certs)]) == 0
    assert cli.main(["certs", "gateway", "--dir", str(certs), "--host", "127.0.0.1"]) == 0
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parkfleet.cli", "gateway",
        "--listen", "127.0.0.1:0", "--certs", str(certs), "--models", str(tmp_path / "models"),
        "--kubeconfig", str(kubeconfig), "--kubelet-port", "0",
        "--data-dir", str(tmp_path / "data"),
        "--health-port", str(port), "--health-addr", "127.0.0.1",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        body = await until_status(f"{url}/readyz", 503, timeout_s=30)
        assert "the node agent has not registered this shard's cells yet" in body
        # Several retries later: still alive, still not ready.
        await asyncio.sleep(4)
        assert await get(f"{url}/livez") == (200, "ok\n")
        assert (await get(f"{url}/readyz"))[0] == 503
        assert proc.returncode is None
    finally:
        await terminate(proc)
