"""``parkfleet gateway`` as a real process: serves cars, exports metrics, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from parkfleet import cli
from parkfleet.certs import FleetCA, KeyPair, car_paths
from parkfleet.devstack import free_port
from tests.carlink_probe import ProbeCar

pytestmark = pytest.mark.integration


async def test_gateway_process(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert cli.main(["certs", "init", "--dir", str(certs)]) == 0
    assert cli.main(["certs", "gateway", "--dir", str(certs), "--host", "127.0.0.1"]) == 0
    assert (
        cli.main(["certs", "car", "--dir", str(certs), "--car-id", "c1", "--attr", "pool=eu"]) == 0
    )
    metrics_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parkfleet.cli", "gateway",
        "--listen", "127.0.0.1:0", "--certs", str(certs), "--models", str(tmp_path / "models"),
        "--metrics-port", str(metrics_port), "--metrics-addr", "127.0.0.1",
        "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        address = line.split()[-1]
        cert, key = car_paths(certs, "c1")
        pair = KeyPair(cert.read_bytes(), key.read_bytes())
        ca_pem = FleetCA.load(certs).cert_pem
        async with ProbeCar(address, ca_pem, pair) as car:
            welcome = await car.connect()
            assert (welcome.car_id, welcome.cell) == ("c1", "eu-0")
            await car.telemetry()
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            body = ""
            for _ in range(100):
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(url, timeout=5).read().decode()
                )
                if 'parkfleet_gateway_cars_eligible{cell="eu-0",pool="eu"} 1.0' in body:
                    break
                await asyncio.sleep(0.05)
            assert 'parkfleet_gateway_cars_connected{cell="eu-0",pool="eu"} 1.0' in body
            assert 'parkfleet_gateway_cars_eligible{cell="eu-0",pool="eu"} 1.0' in body
            assert "parkfleet_gateway_telemetry_processing_seconds_bucket" in body
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
