"""Admission: an InferenceJob that names a FleetPool which does not exist is refused.

The CRD's schema and CEL rules check everything one object can say about itself; whether
its pool exists needs a lookup, so it takes a validating webhook, served by the operator
(Kopf's admission server). The webhook's failure policy is Ignore: while the operator is
down jobs can still be created, and the job's ``UnknownPool`` condition still tells the
truth about a missing pool (as it does when a pool is deleted after its jobs). For the same
reason a lookup that fails (the API server, or a bug of ours: logged with its traceback)
lets the job in rather than showing the user an error that is not theirs.

``register`` adds the handler; ``run.register_handlers`` calls it only when the operator serves
admission (Kopf refuses to start with an admission handler and no server).
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import GROUP, VERSION
from parkfleet.certs import FleetCA
from parkfleet.controller.state import OperatorState

__all__ = ["HANDLER_ID", "AdmissionConfig", "register", "webhook_server"]

log = logging.getLogger(__name__)

# The webhook's URL path (Kopf serves each handler at /<id>); the Helm chart names it too.
HANDLER_ID = "inferencejob-pool"


@dataclass(frozen=True)
class AdmissionConfig:
    """Where and how the operator serves admission reviews.

    Attributes:
        port: HTTPS port to listen on.
        addr: Address to listen on.
        host: Host name or address the API server reaches the webhook at (the URL of a
            configuration Kopf manages, and the serving certificate's name).
        cert_dir: A folder with ``tls.crt``, ``tls.key`` and ``ca.crt`` (a
            ``kubernetes.io/tls`` Secret); None creates a CA and a serving certificate.
        managed: Name of the ValidatingWebhookConfiguration Kopf keeps pointing at this
            server; None when something else (the Helm chart) creates it.
    """

    port: int
    addr: str = "0.0.0.0"
    host: str | None = None
    cert_dir: Path | None = None
    managed: str | None = None


def webhook_server(config: AdmissionConfig) -> kopf.WebhookServer:
    """Kopf's HTTPS admission server for ``config``, with its certificate in place."""
    host = config.host or config.addr
    cert_dir = config.cert_dir
    if cert_dir is None:
        # Nobody provisioned one (a local run): a CA of our own, its bundle handed to the
        # managed configuration so the API server trusts it.
        cert_dir = Path(tempfile.mkdtemp(prefix="parkfleet-admission-"))
        # Kopf reads the files when its server starts; they are not needed after we exit.
        atexit.register(shutil.rmtree, cert_dir, ignore_errors=True)
        ca = FleetCA.create("parkfleet operator admission CA")
        hosts = [host] + ([config.addr] if config.addr not in (host, "0.0.0.0") else [])
        ca.issue_gateway(hosts).save(cert_dir / "tls.crt", cert_dir / "tls.key")
        (cert_dir / "ca.crt").write_bytes(ca.cert_pem)
    return kopf.WebhookServer(
        addr=config.addr,
        port=config.port,
        host=host,
        certfile=cert_dir / "tls.crt",
        pkeyfile=cert_dir / "tls.key",
        cafile=cert_dir / "ca.crt",
    )


async def _pool_exists(state: OperatorState, name: str) -> bool:
    api = await state.api()
    try:
        await client.CustomObjectsApi(api).get_cluster_custom_object(
            GROUP, VERSION, "fleetpools", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def pool_exists(*, spec: kopf.Spec, state: OperatorState, **kwargs: Any) -> None:
    """Refuses a job whose ``spec.pool`` names no FleetPool (on create, or when it changes)."""
    old = kwargs.get("old")
    operation = kwargs.get("operation")
    pool = spec.get("pool")
    if not isinstance(pool, str) or not pool:
        return  # the schema says what is wrong with it
    if operation == "UPDATE" and old is not None and old.get("spec", {}).get("pool") == pool:
        return  # unchanged: a later pool deletion is the UnknownPool condition's to report
    try:
        exists = await _pool_exists(state, pool)
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        # Undecided: let it in, as the failure policy Ignore would; UnknownPool still tells.
        log.warning("admission: FleetPool %r could not be looked up (%s): allowed", pool, exc)
        return
    except Exception:
        # A bug of ours must not become the user's rejection reason: logged in full, allowed.
        log.exception("admission: looking up FleetPool %r failed: allowed", pool)
        return
    if not exists:
        state.metrics.admission_denials.labels(reason="UnknownPool").inc()
        raise kopf.AdmissionError(
            f'spec.pool: Not found: no FleetPool named "{pool}" '
            "(kubectl get fleetpools lists them; create the pool first)",
            code=422,
        )


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    """Adds the validating handler to ``registry``, bound to ``state``."""
    kopf.on.validate(
        GROUP,
        VERSION,
        "inferencejobs",
        id=HANDLER_ID,
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
        registry=registry,
    )(functools.partial(pool_exists, state=state))
