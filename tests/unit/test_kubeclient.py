"""parkfleet's API clients: named for the audit log, no environment lookups per request."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from parkfleet import __version__
from parkfleet.kubeclient import connect

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for var in ("https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return str(path)


async def test_the_client_names_itself_and_skips_netrc(kubeconfig: str) -> None:
    api = await connect("parkfleet-test", kubeconfig)
    try:
        assert api.user_agent == f"parkfleet-test/{__version__}"
        assert api.configuration.host == "https://127.0.0.1:6443"
        # The attribute exists in this aiohttp (a rename would silently undo the setting).
        assert "_trust_env" in aiohttp.ClientSession.ATTRS
        assert api.rest_client.pool_manager.trust_env is False
    finally:
        await api.close()


async def test_a_proxy_from_the_environment_is_still_honoured(
    kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    api = await connect("parkfleet-test", kubeconfig)
    try:
        assert api.rest_client.pool_manager.trust_env is True
    finally:
        await api.close()
