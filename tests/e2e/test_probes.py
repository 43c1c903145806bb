"""The operator's and a gateway shard's probes against the real local control plane:
``/readyz`` answers ``ok`` once each is ready to serve, ``/livez`` all along.

What makes them not ready (no API server, stopping) is in
``tests/integration/test_probes.py``; the chart's probes are in ``tests/e2e/test_helm.py``.
"""

from __future__ import annotations

import functools
import urllib.error
import urllib.request

import pytest

from parkfleet.devstack import DevStack, free_port

from .kube import until

pytestmark = pytest.mark.e2e


def answer(url: str) -> tuple[int, str] | None:
    """``GET url``: status and body; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def ready(url: str) -> str | None:
    """``/readyz``'s answer when it is ``ok``; None until then."""
    got = answer(f"{url}/readyz")
    return got[1] if got is not None and got[0] == 200 else None


def test_operator_and_gateway_become_ready(stack: DevStack) -> None:
    # The session's operator and gateway serve no probes: restarted with them (the
    # operator as the only one again, the cars reconnect to the gateway).
    operator_port, gateway_port = free_port(), free_port()
    probes = ["--health-addr=127.0.0.1"]
    stack.procs["operator"].stop()
    stack.start_operator(extra=[f"--health-port={operator_port}", *probes])
    stack.procs["gateway"].stop()
    stack.start_gateway(f"--health-port={gateway_port}", *probes)
    for port in (operator_port, gateway_port):
        url = f"http://127.0.0.1:{port}"
        # Kopf, the webhook and the API server; the car link and the node agent's cells.
        assert until(functools.partial(ready, url), 60, f"{url}/readyz to be ok") == "ok\n"
        assert answer(f"{url}/livez") == (200, "ok\n")
