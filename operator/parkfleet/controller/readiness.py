"""The operator's ``/readyz`` (``--health-port``, ``parkfleet.healthserver``).

Ready to serve when all of these hold:

- Kopf has started: its startup is done and its tasks run (``kopf.spawn_tasks``'s
  ``ready_flag``);
- the admission webhook, when the operator serves one, accepts connections (Kopf opens it
  once it has logged in and scanned the API's resources), so that the webhook Service
  sends reviews only to operators that answer them;
- the API server answers the operator's own client: a list of at most one FleetPool (the
  CRD is installed, the credentials and the RBAC hold), asked at most every few seconds;
- it is not stopping.

The standby is ready by the same rules: it answers reviews too, and takes over the
handlers within seconds of the active one's end; that it waits for its peering turn is
not a matter of readiness. ``/livez`` asks none of this, since no restart cures any of it.
"""

from __future__ import annotations

import asyncio
import contextlib

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import GROUP, VERSION
from parkfleet.controller.admission import AdmissionConfig
from parkfleet.controller.state import OperatorState

__all__ = ["OperatorReadiness"]

# A wildcard listen address is dialled on loopback.
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class OperatorReadiness:
    """The operator's readiness check (see the module's docstring).

    Args:
        state: The operator's API client (and metrics).
        stop: Set when the operator is stopping.
        admission: Where the webhook listens; None when the operator serves none.
        recheck_s: How long an answer of the API server counts (probes come every 10 s).
        timeout_s: How long the API server and the webhook may take to answer a check.

    Attributes:
        started: Set by Kopf once it has started (pass it as ``ready_flag``).
    """

    def __init__(
        self,
        state: OperatorState,
        stop: asyncio.Event,
        admission: AdmissionConfig | None,
        recheck_s: float = 5.0,
        timeout_s: float = 3.0,
    ) -> None:
        self.state = state
        self.stop = stop
        self.admission = admission
        self.recheck_s = recheck_s
        self.timeout_s = timeout_s
        self.started = asyncio.Event()
        self._answered_at: float | None = None
        self._asking = asyncio.Lock()

    async def reasons(self) -> list[str]:
        """What is not ready yet; empty: ready."""
        out = []
        if self.stop.is_set():
            out.append("stopping")
        if not self.started.is_set():
            out.append("Kopf has not started yet")
        if self.admission is not None and not await self._webhook_listens(self.admission):
            out.append(
                f"the admission webhook does not accept connections on port "
                f"{self.admission.port} yet"
            )
        problem = await self._api_problem()
        if problem:
            out.append(f"the API server does not answer the operator: {problem}")
        return out

    async def _webhook_listens(self, admission: AdmissionConfig) -> bool:
        host = _LOOPBACK.get(admission.addr, admission.addr)
        try:
            async with asyncio.timeout(self.timeout_s):
                _, writer = await asyncio.open_connection(host, admission.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _api_problem(self) -> str | None:
        # Probes that come together share one request.
        async with self._asking:
            loop = asyncio.get_running_loop()
            if self._answered_at is not None and loop.time() - self._answered_at < self.recheck_s:
                return None
            try:
                api = await self.state.api()
                await client.CustomObjectsApi(api).list_cluster_custom_object(
                    GROUP, VERSION, "fleetpools", limit=1, _request_timeout=self.timeout_s
                )
            except ApiException as exc:
                return f"{exc.status} {exc.reason}"
            except Exception as exc:  # unreachable, refused, timed out: said as it is
                return f"{type(exc).__name__}: {exc}"
            self._answered_at = loop.time()
            return None
