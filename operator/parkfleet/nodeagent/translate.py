"""Pod → task: what a pod bound to a cell asks a car to do, or why a car cannot.

Cars run no arbitrary containers (decision 3). A pod's image names a runtime the
cars support; the model, inputs, item range and batch size come from the container's
env (or the pod's annotations, which env overrides). A pod asking for something a car
cannot honour is refused with a message that names the field.

Pure logic: no I/O, so every rule is unit-tested.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parkfleet.contract import LABEL_JOB_UID, check_model_uri
from parkfleet.objectstore import is_s3_uri, parse_s3_uri

__all__ = [
    "ENV_BATCH_SIZE",
    "ENV_GPU_MEMORY_MIB",
    "ENV_INPUT",
    "ENV_INPUT_CONFIGMAP",
    "ENV_INPUT_NAME",
    "ENV_ITEMS",
    "ENV_MAX_TOKENS",
    "ENV_MODEL",
    "ENV_MODEL_SHA256",
    "ENV_MODEL_URI",
    "ENV_OBJECT_STORE_SECRET",
    "ENV_OUTPUT",
    "ENV_OUTPUT_NAMES",
    "ENV_TEXT_FIELD",
    "ENV_TOKENIZER",
    "ENV_TOKENIZER_SHA256",
    "PodTask",
    "Unsupported",
    "runtime_of",
    "translate",
]

ENV_MODEL = "PARKFLEET_MODEL"  # a model name the gateway's model store knows
ENV_MODEL_SHA256 = "PARKFLEET_MODEL_SHA256"  # or a content hash
# or an https:// or s3:// URI the gateway downloads it from (with the sha256; an s3:// one
# with the pod's object-store Secret); cars never fetch
ENV_MODEL_URI = "PARKFLEET_MODEL_URI"
# a .npy/.jsonl file or a directory of them, in the pod's namespace's area of the data root
ENV_INPUT = "PARKFLEET_INPUT"
ENV_INPUT_CONFIGMAP = "PARKFLEET_INPUT_CONFIGMAP"  # or NAME/KEY: a JSON list of items
ENV_INPUT_NAME = "PARKFLEET_INPUT_NAME"
ENV_OUTPUT_NAMES = "PARKFLEET_OUTPUT_NAMES"  # comma-separated
ENV_ITEMS = "PARKFLEET_ITEMS"  # "START-END" (END exclusive) or "COUNT"
ENV_BATCH_SIZE = "PARKFLEET_BATCH_SIZE"
ENV_OUTPUT = "PARKFLEET_OUTPUT"  # result directory in the namespace's area of the data root
ENV_GPU_MEMORY_MIB = "PARKFLEET_GPU_MEMORY_MIB"
# The parkfleet.io/object-store Secret (the pod's namespace) s3:// inputs, outputs and
# models are read and written with.
ENV_OBJECT_STORE_SECRET = "PARKFLEET_OBJECT_STORE_SECRET"
# Text inputs: a .jsonl of texts, tokenised on the gateway with this tokenizer.json (a path
# in the namespace's area or an s3:// URI), optionally pinned by sha256.
ENV_TOKENIZER = "PARKFLEET_TOKENIZER"
ENV_TOKENIZER_SHA256 = "PARKFLEET_TOKENIZER_SHA256"
ENV_TEXT_FIELD = "PARKFLEET_TEXT_FIELD"  # the text's key in a line that is a JSON object
ENV_MAX_TOKENS = "PARKFLEET_MAX_TOKENS"  # texts are truncated to this many tokens
# Work units of an InferenceJob: the pod's Job completion index picks its items.
ENV_UNIT_ITEMS = "PARKFLEET_UNIT_ITEMS"
ENV_TOTAL_ITEMS = "PARKFLEET_TOTAL_ITEMS"
ENV_REDUNDANCY = "PARKFLEET_REDUNDANCY"  # copies on distinct cars
ENV_COMPARE = "PARKFLEET_COMPARE"  # MODE:OUTPUT:TOLERANCE, e.g. argmax:probabilities:0
# At redundancy 1, the fraction of units also run on a second car (default: the pool's).
ENV_SPOT_CHECK = "PARKFLEET_SPOT_CHECK_FRACTION"
ANNOTATION_INDEX = "batch.kubernetes.io/job-completion-index"
ANNOTATION_PREFIX = "parkfleet.io/"

_RUNTIME_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9.\-]+(?::[0-9]+)?/)*(?P<name>[a-z0-9][a-z0-9._\-]*)(?::[\w.\-]+)?$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_MAX_ITEMS = 100_000_000
# A Kubernetes uid (the operator's label on a job's pods carries the InferenceJob's).
_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z\-]{0,63}$")
# What a unit file is called without its ``.npz``; a plain pod may not take such a name.
_UNIT_FILE = re.compile(r"^unit-[0-9]+$")
# Volumes a pod may carry that never reach a car: the ServiceAccount admission adds a
# projected token volume to every pod, and an emptyDir holds nothing.
_IGNORED_VOLUMES = frozenset({"projected", "emptyDir"})


class Unsupported(ValueError):
    """The pod asks for something a car cannot honour.

    Attributes:
        field: The pod field at fault, e.g. ``spec.volumes[0].hostPath``.
        detail: Why.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class PodTask:
    """What a pod asks the fleet to do.

    Attributes:
        runtime: The runtime named by the image, e.g. ``onnxruntime``.
        container: The container's name (for status and logs).
        model_name: A model name the gateway's store resolves ("" when by hash).
        model_sha256: The model's content hash ("" when by name).
        model_uri: An ``https://`` or ``s3://bucket/key`` URI (the latter read with
            ``object_store_secret``) the gateway downloads the model from when its store
            lacks ``model_sha256`` ("" for none). Cars never see it: they get every model
            from their gateway, by hash.
        input_path: The input: a ``.npy``/``.jsonl`` file or a directory of them,
            relative to the namespace's area of the data root, or an ``s3://`` URI of an
            object or a prefix ("" when the input is a ConfigMap).
        input_configmap: ``(name, key)`` of a ConfigMap holding the items as a JSON list
            (tiny inputs), or None.
        input_name: The model input fed with the items.
        output_names: Model outputs to keep (empty: all the store knows).
        item_start: First item.
        item_end: One past the last item (None: to the end of the input).
        batch_size: Items per inference call.
        output_dir: Result directory, relative to the namespace's area, or an ``s3://``
            prefix ("" for none).
        gpu_memory_mib: GPU memory the task needs.
        unit: The work unit (Job completion index) or None for a plain pod.
        job_uid: The uid of the InferenceJob whose unit this is ("" for a plain pod).
        copies: Distinct cars each item runs on (2+: results are cross-checked).
        compare: How copies are compared: (mode, output, tolerance).
        spot_check: The job's spot-check fraction (None: the pool's).
        object_store_secret: The object-store Secret of the pod's namespace ("" for none;
            required by any ``s3://`` location).
        tokenizer: A text input's ``tokenizer.json`` (a path in the area or an ``s3://``
            URI); "" when the input is tensors.
        tokenizer_sha256: The sha256 the tokenizer must have ("" when not pinned).
        text_field: The text's key in a line that is a JSON object.
        max_tokens: Texts are truncated to this many tokens.
    """

    runtime: str
    container: str
    model_name: str
    model_sha256: str
    model_uri: str
    input_path: str
    input_configmap: tuple[str, str] | None
    input_name: str
    output_names: tuple[str, ...]
    item_start: int
    item_end: int | None
    batch_size: int
    output_dir: str
    gpu_memory_mib: int
    unit: int | None = None
    job_uid: str = ""
    copies: int = 1
    compare: tuple[str, str, float] = ("argmax", "", 0.0)
    spot_check: float | None = None
    object_store_secret: str = ""
    tokenizer: str = ""
    tokenizer_sha256: str = ""
    text_field: str = "text"
    max_tokens: int = 256

    @property
    def result_name(self) -> str:
        """The result file's name in ``output_dir`` (``unit-000042.npz`` for units)."""
        return f"unit-{self.unit:06d}.npz" if self.unit is not None else ""


def runtime_of(image: str) -> str:
    """The runtime an image names: its last path component without the tag."""
    m = _RUNTIME_IMAGE.match(image)
    return m.group("name") if m else ""


def _relative_path(value: str, field: str) -> str:
    # Paths are read on the gateway: never let a pod reach outside its namespace's area
    # (taskio.resolve_in_area checks again, symlinks followed). Names starting with "."
    # are parkfleet's own there (result spools, files being written).
    if value.startswith("/"):
        raise Unsupported(
            field, f"{value!r} is absolute: give a path relative to the namespace's data area"
        )
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise Unsupported(field, f"{value!r} must be a path inside the namespace's data area")
    if any(p.startswith(".") for p in parts):
        raise Unsupported(field, f"{value!r}: names starting with '.' are parkfleet's own")
    return "/".join(parts)


def _location(value: str, field: str, secret: str) -> str:
    """A volume path (checked as :func:`_relative_path`) or an ``s3://`` URI, which needs
    the pod's object-store Secret."""
    if not is_s3_uri(value):
        return _relative_path(value, field)
    try:
        parse_s3_uri(value)
    except ValueError as exc:
        raise Unsupported(field, str(exc)) from None
    if not secret:
        raise Unsupported(
            field,
            f"an s3:// location needs {ENV_OBJECT_STORE_SECRET}: the object-store Secret "
            "of the pod's namespace it is read and written with",
        )
    return value


def _job_of(pod: Mapping[str, Any]) -> str:
    """The uid of the InferenceJob whose unit ``pod`` is, "" for a plain pod.

    A unit's pod is one a Job controls (its controller reference, set by the Job
    controller) that carries the operator's label with the InferenceJob's uid.
    """
    meta: Mapping[str, Any] = pod.get("metadata") or {}
    uid = str((meta.get("labels") or {}).get(LABEL_JOB_UID, ""))
    controlled_by_job = any(
        ref.get("controller")
        and ref.get("kind") == "Job"
        and str(ref.get("apiVersion", "")).startswith("batch/")
        for ref in meta.get("ownerReferences") or ()
    )
    return uid if controlled_by_job and _UID.match(uid) else ""


def _model_uri(value: str, field: str) -> str:
    # Refused here, before any car sees the pod: a car never fetches from a user's location.
    try:
        return check_model_uri(value)
    except ValueError as exc:
        raise Unsupported(field, str(exc)) from None


def _int(value: str, field: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise Unsupported(field, f"{value!r} is not an integer") from None
    if not low <= n <= high:
        raise Unsupported(field, f"{n} is outside {low}..{high}")
    return n


def _items(value: str, field: str) -> tuple[int, int | None]:
    if not value:
        return 0, None
    if "-" in value:
        start_s, _, end_s = value.partition("-")
        start = _int(start_s, field, 0, _MAX_ITEMS)
        end = _int(end_s, field, 0, _MAX_ITEMS)
        if end <= start:
            raise Unsupported(field, f"{value!r}: END must be greater than START")
        return start, end
    return 0, _int(value, field, 1, _MAX_ITEMS)


def _refuse_host_access(spec: Mapping[str, Any]) -> None:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            raise Unsupported(f"spec.{key}", "a car shares nothing with its host")
    for i, vol in enumerate(spec.get("volumes") or ()):
        kind = next((k for k in vol if k != "name"), "")
        if kind not in _IGNORED_VOLUMES:
            raise Unsupported(f"spec.volumes[{i}].{kind}", "cars mount no volumes")
    for key in ("initContainers", "ephemeralContainers"):
        if spec.get(key):
            raise Unsupported(f"spec.{key}", "cars run one task per pod")


def _refuse_container_features(c: Mapping[str, Any], at: str, ignored_volumes: set[str]) -> None:
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        raise Unsupported(f"{at}.securityContext.privileged", "cars run nothing privileged")
    caps = (sc.get("capabilities") or {}).get("add")
    if caps:
        raise Unsupported(f"{at}.securityContext.capabilities.add", "cars grant no capabilities")
    if c.get("ports"):
        raise Unsupported(f"{at}.ports", "cars accept no inbound connections")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if c.get(probe):
            raise Unsupported(f"{at}.{probe}", "cars run no probes; progress is reported instead")
    # Mounts of the volumes Kubernetes adds by itself (the service-account token) are
    # accepted and not passed on: a task gets no credentials on a car.
    for j, mount in enumerate(c.get("volumeMounts") or ()):
        if mount.get("name") not in ignored_volumes:
            raise Unsupported(f"{at}.volumeMounts[{j}]", "cars mount no volumes")
    if c.get("command"):
        raise Unsupported(f"{at}.command", "cars run the runtime named by the image, no command")


def _settings(pod: Mapping[str, Any], container: Mapping[str, Any], at: str) -> dict[str, str]:
    """Annotations ``parkfleet.io/<lower-case-name>``, overridden by literal env values."""
    out: dict[str, str] = {}
    annotations: Mapping[str, str] = (pod.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith(ANNOTATION_PREFIX):
            env = "PARKFLEET_" + key[len(ANNOTATION_PREFIX) :].upper().replace("-", "_")
            out[env] = value
    for j, env in enumerate(container.get("env") or ()):
        name = env.get("name", "")
        if not name.startswith("PARKFLEET_"):
            continue
        if "valueFrom" in env:
            raise Unsupported(f"{at}.env[{j}].valueFrom", "give parkfleet settings as values")
        out[name] = str(env.get("value", ""))
    return out


def translate(pod: Mapping[str, Any], known_runtimes: Sequence[str]) -> PodTask:
    """Reads a pod bound to a cell into the task it asks for.

    Args:
        pod: The pod as a dict from the API.
        known_runtimes: Runtimes the pool allows.

    Returns:
        The task.

    Raises:
        Unsupported: A field the cars cannot honour; ``field`` names it.
    """
    spec: Mapping[str, Any] = pod.get("spec") or {}
    _refuse_host_access(spec)
    containers: Sequence[Mapping[str, Any]] = spec.get("containers") or ()
    if len(containers) != 1:
        raise Unsupported("spec.containers", f"exactly one container, got {len(containers)}")
    c = containers[0]
    at = "spec.containers[0]"
    ignored = {v.get("name", "") for v in spec.get("volumes") or ()}
    _refuse_container_features(c, at, ignored)

    runtime = runtime_of(str(c.get("image", "")))
    if runtime not in known_runtimes:
        raise Unsupported(
            f"{at}.image",
            f"{c.get('image')!r} names runtime {runtime!r}; cars of this pool run "
            + ", ".join(repr(r) for r in known_runtimes),
        )
    env = _settings(pod, c, at)

    model_name = env.get(ENV_MODEL, "")
    sha = env.get(ENV_MODEL_SHA256, "").lower()
    uri = _model_uri(env.get(ENV_MODEL_URI, ""), f"{at}.env[{ENV_MODEL_URI}]")
    if uri and not sha:
        raise Unsupported(
            f"{at}.env[{ENV_MODEL_SHA256}]",
            f"required with {ENV_MODEL_URI}: the gateway checks what it fetches against it",
        )
    if not model_name and not sha:
        raise Unsupported(f"{at}.env", f"set {ENV_MODEL} (a model name) or {ENV_MODEL_SHA256}")
    if model_name and not _NAME.match(model_name):
        raise Unsupported(f"{at}.env[{ENV_MODEL}]", f"{model_name!r} is not a model name")
    if sha and not _SHA256.match(sha):
        raise Unsupported(f"{at}.env[{ENV_MODEL_SHA256}]", "must be 64 hex digits")
    secret = env.get(ENV_OBJECT_STORE_SECRET, "")
    if secret and not _SECRET_NAME.match(secret):
        raise Unsupported(
            f"{at}.env[{ENV_OBJECT_STORE_SECRET}]", f"{secret!r} is not a Secret name"
        )
    if is_s3_uri(uri) and not secret:
        raise Unsupported(
            f"{at}.env[{ENV_MODEL_URI}]",
            f"an s3:// model needs {ENV_OBJECT_STORE_SECRET}: the object-store Secret of "
            "the pod's namespace the gateway fetches it with",
        )
    input_path = env.get(ENV_INPUT, "")
    configmap = env.get(ENV_INPUT_CONFIGMAP, "")
    if bool(input_path) == bool(configmap):
        raise Unsupported(
            f"{at}.env",
            f"set one of {ENV_INPUT} (a .npy/.jsonl file or directory in the namespace's "
            f"data area) and {ENV_INPUT_CONFIGMAP} (NAME/KEY of a ConfigMap)",
        )
    input_cm: tuple[str, str] | None = None
    if configmap:
        name, sep, cm_key = configmap.partition("/")
        if not sep or not name or not cm_key:
            raise Unsupported(f"{at}.env[{ENV_INPUT_CONFIGMAP}]", f"{configmap!r} is not NAME/KEY")
        input_cm = (name, cm_key)
    else:
        input_path = _location(input_path, f"{at}.env[{ENV_INPUT}]", secret)
    output_dir = env.get(ENV_OUTPUT, "")
    if output_dir:
        output_dir = _location(output_dir, f"{at}.env[{ENV_OUTPUT}]", secret)
    tokenizer = env.get(ENV_TOKENIZER, "")
    if tokenizer:
        if input_cm is not None:
            raise Unsupported(
                f"{at}.env[{ENV_TOKENIZER}]",
                f"text inputs are a .jsonl in {ENV_INPUT}, not a ConfigMap",
            )
        tokenizer = _location(tokenizer, f"{at}.env[{ENV_TOKENIZER}]", secret)
    tokenizer_sha = env.get(ENV_TOKENIZER_SHA256, "").lower()
    if tokenizer_sha and not _SHA256.match(tokenizer_sha):
        raise Unsupported(f"{at}.env[{ENV_TOKENIZER_SHA256}]", "must be 64 hex digits")
    text_field = env.get(ENV_TEXT_FIELD, "text")
    if not 0 < len(text_field) <= 128:
        raise Unsupported(f"{at}.env[{ENV_TEXT_FIELD}]", "1 to 128 characters")
    start, end = _items(env.get(ENV_ITEMS, ""), f"{at}.env[{ENV_ITEMS}]")
    unit = None
    job_uid = _job_of(pod)
    if ENV_UNIT_ITEMS in env:
        if not job_uid:
            # Only a job's own pods write its unit files (and count them done).
            raise Unsupported(
                f"{at}.env[{ENV_UNIT_ITEMS}]",
                "only an InferenceJob's pods (created by its Job, with the label "
                f"{LABEL_JOB_UID}) are work units",
            )
        unit, start, end = _unit(pod, env, at)
    elif output_dir and _UNIT_FILE.match(str((pod.get("metadata") or {}).get("name", ""))):
        raise Unsupported(
            "metadata.name",
            "a plain pod's result is <pod name>.npz, and unit-NNNNNN.npz are an "
            "InferenceJob's unit files: choose another name",
        )
    batch = _int(env.get(ENV_BATCH_SIZE, "32"), f"{at}.env[{ENV_BATCH_SIZE}]", 1, 65536)
    memory = _int(env.get(ENV_GPU_MEMORY_MIB, "0"), f"{at}.env[{ENV_GPU_MEMORY_MIB}]", 0, 1 << 20)
    outputs = tuple(o.strip() for o in env.get(ENV_OUTPUT_NAMES, "").split(",") if o.strip())
    return PodTask(
        runtime=runtime,
        container=str(c.get("name", "main")),
        model_name=model_name,
        model_sha256=sha,
        model_uri=uri,
        input_path=input_path,
        input_configmap=input_cm,
        input_name=env.get(ENV_INPUT_NAME, ""),
        output_names=outputs,
        item_start=start,
        item_end=end,
        batch_size=batch,
        output_dir=output_dir,
        gpu_memory_mib=memory,
        unit=unit,
        job_uid=job_uid if unit is not None else "",
        copies=_int(env.get(ENV_REDUNDANCY, "1"), f"{at}.env[{ENV_REDUNDANCY}]", 1, 5),
        compare=_compare(env.get(ENV_COMPARE, ""), f"{at}.env[{ENV_COMPARE}]"),
        spot_check=_fraction(env.get(ENV_SPOT_CHECK), f"{at}.env[{ENV_SPOT_CHECK}]"),
        object_store_secret=secret,
        tokenizer=tokenizer,
        tokenizer_sha256=tokenizer_sha,
        text_field=text_field,
        max_tokens=_int(env.get(ENV_MAX_TOKENS, "256"), f"{at}.env[{ENV_MAX_TOKENS}]", 2, 8192),
    )


def _fraction(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    try:
        fraction = float(value)
    except ValueError:
        raise Unsupported(field, f"{value!r} is not a number") from None
    if not 0.0 <= fraction <= 1.0:  # NaN fails too
        raise Unsupported(field, f"{value!r} is not between 0 and 1")
    return fraction


def _unit(pod: Mapping[str, Any], env: Mapping[str, str], at: str) -> tuple[int, int, int]:
    """Unit index and item range of an InferenceJob pod."""
    per = _int(env[ENV_UNIT_ITEMS], f"{at}.env[{ENV_UNIT_ITEMS}]", 1, _MAX_ITEMS)
    total = _int(env.get(ENV_TOTAL_ITEMS, ""), f"{at}.env[{ENV_TOTAL_ITEMS}]", 1, _MAX_ITEMS)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(ANNOTATION_INDEX, "")
    field = f"metadata.annotations[{ANNOTATION_INDEX}]"
    index = _int(raw, field, 0, _MAX_ITEMS)
    start = index * per
    if start >= total:
        raise Unsupported(field, f"unit {index} starts past the last item ({total - 1})")
    return index, start, min(total, start + per)


def _compare(value: str, field: str) -> tuple[str, str, float]:
    if not value:
        return ("argmax", "", 0.0)
    mode, _, rest = value.partition(":")
    output, _, tol = rest.partition(":")
    if mode not in ("argmax", "absolute", "relative") or not output:
        raise Unsupported(field, f"{value!r} is not MODE:OUTPUT[:TOLERANCE]")
    try:
        tolerance = float(tol or 0)
    except ValueError:
        raise Unsupported(field, f"tolerance {tol!r} is not a number") from None
    return (mode, output, tolerance)
