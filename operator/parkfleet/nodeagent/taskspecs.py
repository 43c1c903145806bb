"""A pod's task spec: its model resolved by the gateway, its input opened, its result file.

The model is resolved in the cluster (by name, by sha256, or downloaded by the gateway
from an ``https://`` URI, or an ``s3://`` one with the pod's object-store Secret, and
checked against the sha256); the task names it by hash only, so that cars get it from
their gateway and from nowhere else.

The I/O a pod needs before its task can be submitted, none of it on the event loop:
the model through :meth:`TaskPort.resolve_model` (cached), a ConfigMap read from the
API (in the pod's namespace), a volume input opened in a thread (and kept, for the
job's other units). Every path is the pod's namespace's (``taskio.resolve_in_area``).
What the pod itself got wrong raises :class:`BadInput`, which fails the pod with a
message naming the field; anything else is an error of ours, retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.api import FleetPoolSpec
from parkfleet.contract import REASON_INVALID_INPUT, REASON_MODEL_LOAD_FAILED
from parkfleet.nodeagent.metrics import NodeAgentMetrics
from parkfleet.nodeagent.objectinput import list_objects
from parkfleet.nodeagent.openinputs import ObjectInputs, Tokenizers, file_readers
from parkfleet.nodeagent.ranged import Parts, RangeReader
from parkfleet.nodeagent.resultobject import ResultObject, unit_prefix
from parkfleet.nodeagent.storesecrets import StoreSecrets
from parkfleet.nodeagent.taskio import (
    RESERVED_ENTRIES,
    ConfigMapInput,
    InputCache,
    ResultFile,
    resolve_in_area,
)
from parkfleet.nodeagent.textinput import TextInput
from parkfleet.nodeagent.translate import (
    ENV_INPUT,
    ENV_MODEL_URI,
    ENV_OBJECT_STORE_SECRET,
    ENV_TOKENIZER,
    PodTask,
    Unsupported,
)
from parkfleet.objectstore import BadSecret, S3Credentials, is_s3_uri, parse_s3_uri, s3_store
from parkfleet.taskport import (
    InputSource,
    ModelFetchFailed,
    ModelInfo,
    ModelNotFound,
    ModelUnreadable,
    ResultSink,
    TaskPort,
    TaskSpec,
)

__all__ = ["BadInput", "Prepared", "TaskSpecs"]


class BadInput(Exception):
    """The pod's model or input cannot be used: the pod fails with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _NoSink:
    """Placeholder until the shell gives each copy its own sink."""

    async def write(self, first_item: int, outputs: Mapping[str, Any]) -> None:
        raise RuntimeError("a task spec was submitted without its sink")

    async def complete(self) -> None:
        raise RuntimeError("a task spec was submitted without its sink")


NO_SINK: ResultSink = _NoSink()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A pod's task, ready to submit once each copy has its sink.

    Attributes:
        spec: The task (its ``task_id``, ``sink`` and ``group`` are set per copy).
        result: The unit's result file or object (with its job's uid for a unit of a
            job), or None when the pod keeps no result.
    """

    spec: TaskSpec
    result: ResultFile | ResultObject | None


class TaskSpecs:
    """Builds pods' task specs.

    Args:
        api: Kubernetes API client (ConfigMap inputs, object-store Secrets).
        port: The gateway (models).
        data_root: Where volume inputs and results live, one area per namespace.
    """

    def __init__(
        self,
        api: client.ApiClient,
        port: TaskPort,
        data_root: Path,
        metrics: NodeAgentMetrics | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.port = port
        self.data_root = data_root
        self.inputs = InputCache()
        self.secrets = StoreSecrets(self.core)
        self.objects = ObjectInputs()
        self.tokenizers = Tokenizers()
        self.metrics = metrics or NodeAgentMetrics()

    async def prepare(
        self, pod: Mapping[str, Any], cell: str, task: PodTask, pool: FleetPoolSpec
    ) -> Prepared:
        """The pod's task spec and result file.

        Raises:
            BadInput: The model or the input cannot be used (the pod's fault).
            ApiException: The API failed otherwise than "no such ConfigMap" (retry).
        """
        credentials = await self._credentials(pod, task)
        model = await self._model(task, credentials)
        source, items, where = await self._input(pod, task, credentials)
        end = task.item_end if task.item_end is not None else items
        if end > items:
            raise BadInput(
                REASON_INVALID_INPUT,
                f"spec.containers[0].env[PARKFLEET_ITEMS]: asks for items up to {end - 1} "
                f"but {where} holds {items}",
            )
        result: ResultFile | ResultObject | None = None
        if task.output_dir:
            name = task.result_name or f"{pod['metadata']['name']}.npz"
            if is_s3_uri(task.output_dir):
                assert credentials is not None  # translate requires the Secret with s3://
                prefix = parse_s3_uri(task.output_dir)
                if task.job_uid:
                    prefix = unit_prefix(prefix, task.job_uid)
                result = ResultObject(
                    prefix.child(name), credentials, task.job_uid, self.metrics.result_uploaded
                )
            else:
                out_dir = self._in_area(pod, task.output_dir, "PARKFLEET_OUTPUT")
                result = ResultFile(out_dir / name, task.job_uid)
        names = task.output_names or model.output_names
        declared = {o.name: o for o in model.outputs}
        unknown = [n for n in names if n not in declared]
        if unknown:
            raise BadInput(
                REASON_INVALID_INPUT,
                f"spec.containers[0].env[PARKFLEET_OUTPUT_NAMES]: the model has no output "
                f"{unknown[0]!r} (it has {', '.join(declared) or 'none'})",
            )
        reserved = [n for n in names if n in RESERVED_ENTRIES]
        if reserved:
            # A model's output must not pass for the file's first item or its job.
            raise BadInput(
                REASON_INVALID_INPUT,
                f"spec.containers[0].env[PARKFLEET_OUTPUT_NAMES]: output {reserved[0]!r} "
                f"has a name result files reserve ({', '.join(sorted(RESERVED_ENTRIES))})",
            )
        spec = TaskSpec(
            task_id=str(pod["metadata"]["uid"]),
            cell=cell,
            runtime=task.runtime,
            model=model.ref,  # by hash, from the gateway: whatever the pod named
            input_name=task.input_name or model.input_name,
            output_names=names,
            output_specs=tuple(declared[n] for n in names),
            input_specs=model.inputs,
            batch_size=task.batch_size,
            item_start=task.item_start,
            item_end=end,
            inputs=source,
            sink=NO_SINK,
            gpu_memory_mib=task.gpu_memory_mib,
            car_wait_s=pool.car_wait_s,
            job=task.job_uid,
        )
        return Prepared(spec, result)

    async def _model(self, task: PodTask, credentials: S3Credentials | None) -> ModelInfo:
        if not is_s3_uri(task.model_uri):
            credentials = None  # the keys go only where the pod's own Secret names
        try:
            if task.model_sha256:
                return await self.port.resolve_model(
                    sha256=task.model_sha256, uri=task.model_uri, credentials=credentials
                )
            return await self.port.resolve_model(name=task.model_name)
        except ModelNotFound as exc:
            raise BadInput(REASON_INVALID_INPUT, str(exc)) from None
        except ModelUnreadable as exc:
            raise BadInput(REASON_MODEL_LOAD_FAILED, str(exc)) from None
        except ModelFetchFailed as exc:  # the gateway's own download, not a car's
            raise BadInput(exc.reason, f"spec.containers[0].env[{ENV_MODEL_URI}]: {exc}") from None

    async def _credentials(self, pod: Mapping[str, Any], task: PodTask) -> S3Credentials | None:
        """The pod's object-store Secret, read in the pod's own namespace (never another);
        None when it names none.

        Raises:
            BadInput: No such Secret, the gateway may not read it, or it is not one.
            ApiException: The API failed otherwise (retry).
        """
        if not task.object_store_secret:
            return None
        try:
            return await self.secrets.get(pod["metadata"]["namespace"], task.object_store_secret)
        except BadSecret as exc:  # its message names the Secret and the key, never a value
            raise BadInput(
                REASON_INVALID_INPUT, f"spec.containers[0].env[{ENV_OBJECT_STORE_SECRET}]: {exc}"
            ) from None

    async def _readers(
        self, pod: Mapping[str, Any], where: str, env: str, credentials: S3Credentials | None
    ) -> list[RangeReader]:
        """The files or objects an input or a tokenizer names, to be read by range."""
        field = f"spec.containers[0].env[{env}]"
        try:
            if is_s3_uri(where):
                assert credentials is not None  # translate requires the Secret with s3://
                loc = parse_s3_uri(where)
                store = s3_store(credentials, loc.bucket)
                return list(await list_objects(store, loc, self.metrics.read_bytes("s3")))
            path = self._in_area(pod, where, env)
            return await asyncio.to_thread(file_readers, path, self.metrics.read_bytes("volume"))
        except BadInput:
            raise
        except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
            raise BadInput(REASON_INVALID_INPUT, f"{field}: {_why(exc)}") from None
        except PermissionError as exc:
            raise BadInput(REASON_INVALID_INPUT, f"{field}: access denied ({_why(exc)})") from None

    async def _text_input(
        self, pod: Mapping[str, Any], task: PodTask, credentials: S3Credentials | None
    ) -> TextInput:
        field = f"spec.containers[0].env[{ENV_TOKENIZER}]"
        readers = await self._readers(pod, task.tokenizer, ENV_TOKENIZER, credentials)
        if len(readers) != 1:
            raise BadInput(REASON_INVALID_INPUT, f"{field}: names {len(readers)} files, not one")
        try:
            tokenizer = await self.tokenizers.open(
                readers[0], task.max_tokens, task.tokenizer_sha256
            )
        except ValueError as exc:
            raise BadInput(REASON_INVALID_INPUT, f"{field}: {exc}") from None
        parts = await self._parts(pod, task, credentials)
        return TextInput(parts, tokenizer, task.text_field)

    async def _parts(
        self, pod: Mapping[str, Any], task: PodTask, credentials: S3Credentials | None
    ) -> Parts:
        readers = await self._readers(pod, task.input_path, ENV_INPUT, credentials)
        try:
            return await self.objects.open(readers)
        except (ValueError, OSError) as exc:
            raise BadInput(
                REASON_INVALID_INPUT, f"spec.containers[0].env[{ENV_INPUT}]: {_why(exc)}"
            ) from None

    async def _input(
        self, pod: Mapping[str, Any], task: PodTask, credentials: S3Credentials | None
    ) -> tuple[InputSource, int, str]:
        if task.tokenizer:
            texts = await self._text_input(pod, task, credentials)
            return texts, texts.items, task.input_path
        if is_s3_uri(task.input_path):
            parts = await self._parts(pod, task, credentials)
            return parts, parts.items, task.input_path
        if task.input_configmap is not None:
            name, key = task.input_configmap
            namespace = pod["metadata"]["namespace"]
            field = "spec.containers[0].env[PARKFLEET_INPUT_CONFIGMAP]"
            try:
                # Only ever in the pod's own namespace: a pod names no other.
                cm = await self.core.read_namespaced_config_map(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    raise BadInput(
                        REASON_INVALID_INPUT,
                        f"{field}: no ConfigMap {name} in namespace {namespace}",
                    ) from None
                if exc.status == 403:
                    # The chart lets the gateway read ConfigMaps only where it was granted.
                    raise BadInput(
                        REASON_INVALID_INPUT,
                        f"{field}: the gateway may not read ConfigMaps in namespace "
                        f"{namespace} (the chart's gateway.configMapInputs.namespaces)",
                    ) from None
                raise
            text = (cm.data or {}).get(key)
            if text is None:
                raise BadInput(REASON_INVALID_INPUT, f"ConfigMap {name} has no key {key!r}")
            try:
                parsed = await asyncio.to_thread(ConfigMapInput, text)
            except ValueError as exc:
                raise BadInput(REASON_INVALID_INPUT, f"ConfigMap {name}/{key}: {exc}") from None
            return parsed, parsed.items, f"ConfigMap {name}/{key}"
        path = self._in_area(pod, task.input_path, "PARKFLEET_INPUT")
        try:
            opened = await self.inputs.open(path)
        except (ValueError, OSError) as exc:
            # An OSError's text holds the gateway's own path: the pod learns only why.
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BadInput(
                REASON_INVALID_INPUT, f"spec.containers[0].env[PARKFLEET_INPUT]: {why}"
            ) from None
        return opened, opened.items, task.input_path

    def _in_area(self, pod: Mapping[str, Any], relative: str, env: str) -> Path:
        try:
            return resolve_in_area(self.data_root, pod["metadata"]["namespace"], relative)
        except ValueError as exc:
            raise BadInput(REASON_INVALID_INPUT, f"spec.containers[0].env[{env}]: {exc}") from None


def check_gpu_memory(task: PodTask, cell: str, port: TaskPort) -> None:
    """Refuses a pod that asks for more GPU memory than any connected car of the cell has.

    Raises:
        Unsupported: It does.
    """
    if not task.gpu_memory_mib:
        return
    cap = port.capacity(cell)
    if cap.cars_connected and task.gpu_memory_mib > cap.max_gpu_memory_mib:
        raise Unsupported(
            "spec.containers[0].env[PARKFLEET_GPU_MEMORY_MIB]",
            f"{task.gpu_memory_mib} MiB is more GPU memory than any car of cell "
            f"{cell} has ({cap.max_gpu_memory_mib} MiB)",
        )


def _why(exc: BaseException) -> str:
    """What went wrong, without the gateway's own paths (an OSError's filename)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
