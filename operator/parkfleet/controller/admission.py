"""Admission: an InferenceJob that names a FleetPool which does not exist, or one whose
``spec.namespaceSelector`` does not allow the job's namespace, is refused.

The CRD's schema and CEL rules check everything one object can say about itself; whether
its pool exists, and allows its namespace, needs lookups, so it takes a validating webhook,
served by the operator (Kopf's admission server). The webhook's failure policy is Ignore:
while the operator is down jobs can still be created, and the job's ``UnknownPool``
condition still tells the truth about a missing pool (as it does when a pool is deleted
after its jobs). For the same reason a lookup that fails (the API server, or a bug of ours:
logged with its traceback) lets the job in rather than showing the user an error that is
not theirs. None of that opens a pool to another namespace: the node agent holds every pod
to its cell's pool's namespaceSelector, so a job let in meanwhile (or before its pool
changed) fails with its pods' reason, NamespaceNotAllowed.

``register`` adds the handler; ``run.register_handlers`` calls it only when the operator serves
admission (Kopf refuses to start with an admission handler and no server).
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import GROUP, VERSION, FleetPoolSpec
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


async def _pool(state: OperatorState, name: str) -> FleetPoolSpec | None:
    """The FleetPool named ``name``; None when there is none."""
    api = await state.api()
    try:
        obj = await client.CustomObjectsApi(api).get_cluster_custom_object(
            GROUP, VERSION, "fleetpools", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return FleetPoolSpec.from_k8s(obj)


async def _namespace_labels(state: OperatorState, name: str) -> Mapping[str, str] | None:
    """The labels of Namespace ``name``; None when there is none."""
    api = await state.api()
    try:
        ns = await client.CoreV1Api(api).read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(ns.metadata.labels or {})


async def _refusal(state: OperatorState, pool: str, namespace: str) -> tuple[str, str] | None:
    """(reason, message) refusing a job of ``namespace`` naming ``pool``; None to admit it."""
    spec = await _pool(state, pool)
    if spec is None:
        return "UnknownPool", (
            f'spec.pool: Not found: no FleetPool named "{pool}" '
            "(kubectl get fleetpools lists them; create the pool first)"
        )
    if spec.namespace_selector is None:
        return None  # every namespace may use it: nothing to look up
    why = spec.namespace_refusal(namespace, await _namespace_labels(state, namespace))
    return None if why is None else ("NamespaceNotAllowed", f"spec.pool: Forbidden: {why}")


async def pool_allows_job(*, spec: kopf.Spec, state: OperatorState, **kwargs: Any) -> None:
    """Refuses a job whose ``spec.pool`` names no FleetPool, or one whose
    ``spec.namespaceSelector`` does not select the job's namespace (on create, or when the
    pool changes)."""
    old = kwargs.get("old")
    operation = kwargs.get("operation")
    body = kwargs.get("body") or {}
    namespace = str(kwargs.get("namespace") or body.get("metadata", {}).get("namespace") or "")
    pool = spec.get("pool")
    if not isinstance(pool, str) or not pool:
        return  # the schema says what is wrong with it
    if operation == "UPDATE" and old is not None and old.get("spec", {}).get("pool") == pool:
        return  # unchanged: a later pool deletion is the UnknownPool condition's to report
    try:
        refusal = await _refusal(state, pool, namespace)
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        # Undecided: let it in, as the failure policy Ignore would; UnknownPool still tells,
        # and the node agent refuses the pods of a namespace the pool does not allow.
        log.warning("admission: FleetPool %r could not be checked (%s): allowed", pool, exc)
        return
    except Exception:
        # A bug of ours must not become the user's rejection reason: logged in full, allowed.
        log.exception("admission: checking FleetPool %r failed: allowed", pool)
        return
    if refusal is not None:
        reason, message = refusal
        state.metrics.admission_denials.labels(reason=reason).inc()
        raise kopf.AdmissionError(message, code=422 if reason == "UnknownPool" else 403)


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
    )(functools.partial(pool_allows_job, state=state))
