"""What crosses component boundaries, written once: ids, exit codes, the termination
summary, the ``parkfleet.io/Cars`` condition and shared defaults.

The operator, the gateway and its node agent are separate processes that agree on
these through the Kubernetes API (a Node's name and conditions, a pod's exit code and
termination message). Each is built and read here, and every read validates what it
reads: a value that did not come from this module's writer is refused with a
``ValueError`` that names the field, never half-read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from parkfleet.objectstore import is_s3_uri, parse_s3_uri

__all__ = [
    "CARS_CONDITION",
    "DEFAULT_CAR_WAIT_S",
    "DEFAULT_POOL_CAR_WAIT_S",
    "EXIT_BAD_SPEC",
    "EXIT_FAILED",
    "EXIT_MODEL",
    "EXIT_RETRY_ELSEWHERE",
    "EXIT_STOPPED",
    "FAIL_JOB_EXIT_CODES",
    "LABEL_JOB_UID",
    "MAX_MODEL_URI",
    "NODE_PREFIX",
    "READY_PER_CAR",
    "REASON_INVALID_INPUT",
    "REASON_MODEL_LOAD_FAILED",
    "REASON_NAMESPACE_NOT_ALLOWED",
    "REASON_POD_DELETED",
    "REASON_UNSUPPORTED",
    "CarCounts",
    "TerminationSummary",
    "cars_condition_message",
    "cell_id",
    "cell_of_node",
    "check_model_uri",
    "data_area",
    "exit_code",
    "node_name",
    "parse_cars_condition",
    "parse_cell_id",
    "parse_results_location",
    "ready_slots",
    "results_location",
    "volume_location",
]

# ---- cells and their Nodes -----------------------------------------------------------

NODE_PREFIX = "pf-"
# A pool name is a DNS-1123 subdomain (the FleetPool's metadata.name); a cell is
# ``<pool>-<index>``, so the last dash splits it.
_CELL = re.compile(r"^(?P<pool>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)-(?P<index>0|[1-9][0-9]{0,5})$")


def cell_id(pool: str, index: int) -> str:
    """The id of a pool's cell number ``index`` (``<pool>-<index>``)."""
    if index < 0:
        raise ValueError(f"cell index {index} < 0")
    return f"{pool}-{index}"


def parse_cell_id(cell: str) -> tuple[str, int]:
    """``(pool, index)`` of a cell id.

    Raises:
        ValueError: ``cell`` is not ``<pool>-<index>``.
    """
    m = _CELL.match(cell)
    if m is None:
        raise ValueError(f"{cell!r} is not a cell id (<pool>-<index>)")
    return m["pool"], int(m["index"])


def node_name(cell: str) -> str:
    """The virtual Node that stands for a cell (``pf-<pool>-<index>``)."""
    return NODE_PREFIX + cell


def cell_of_node(node: str) -> str | None:
    """The cell a Node stands for, or None when the Node is not a parkfleet cell."""
    if not node.startswith(NODE_PREFIX):
        return None
    cell = node[len(NODE_PREFIX) :]
    return cell if _CELL.match(cell) else None


# ---- the data volume: one area per namespace ---------------------------------------------

# A namespace's inputs and results live in its own area of the gateways' data volume,
# ``<data root>/<namespace>/``: every path a pod or an InferenceJob names is relative to
# it (the node agent resolves it, the operator reports a job's results there).
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Set by the operator on an InferenceJob's pods (its Job's template): the job's uid, which
# the node agent writes into each unit file. Only a unit file naming it counts as done.
LABEL_JOB_UID = "parkfleet.io/inference-job-uid"


def data_area(namespace: str) -> str:
    """A namespace's area of the data volume, relative to the volume's root.

    Raises:
        ValueError: ``namespace`` is not a namespace name (a DNS-1123 label).
    """
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"{namespace!r} is not a namespace name")
    return namespace


def volume_location(namespace: str, path: str) -> str:
    """Where ``path`` of a namespace's area is, relative to the data volume's root."""
    return f"{data_area(namespace)}/{path}"


# Where a job's results are, as its status names them and ``parkfleet results`` reads them:
# ``volume:<namespace>/<path>/`` (its area of the data volume) or ``s3://bucket/prefix/<uid>/``.
VOLUME_SCHEME = "volume:"


def results_location(namespace: str, output: str, job_uid: str) -> str:
    """A job's results: its output (a volume path or an ``s3://`` prefix) and its uid."""
    if output.lower().startswith("s3://"):
        return f"{output.rstrip('/')}/{job_uid}/"
    return f"{VOLUME_SCHEME}{volume_location(namespace, output.strip('/'))}/"


def parse_results_location(text: str) -> tuple[str, str]:
    """``("volume", path relative to the volume)`` or ``("s3", "s3://bucket/prefix/")``.

    Raises:
        ValueError: Neither form.
    """
    if text.lower().startswith("s3://"):
        return "s3", text if text.endswith("/") else text + "/"
    if text.startswith(VOLUME_SCHEME):
        path = text[len(VOLUME_SCHEME) :].strip("/")
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{text!r}: not a path inside the data volume")
        data_area(parts[0])
        return "volume", path
    raise ValueError(f"{text!r} is neither volume:<namespace>/<path> nor s3://bucket/prefix/")


# ---- defaults ----------------------------------------------------------------------------

# How long a task may wait for an eligible car of its cell before its pod fails with
# NoEligibleCar: a FleetPool's spec.gateway.graceSeconds, and the gateway's own default
# for tasks that name no pool.
DEFAULT_POOL_CAR_WAIT_S = 120.0
# A FleetPool's spec.gateway.spotCheckFraction: single-copy units also run on a second car.
DEFAULT_SPOT_CHECK_FRACTION = 0.05
DEFAULT_CAR_WAIT_S = 60.0
# Units ready at the gateway beside the ones running, per eligible car: a cell's Node
# takes that many pods more than its eligible GPUs (they wait at the gateway, bound but
# Pending, and start the moment a car of the cell is free), and an InferenceJob keeps as
# many more pods than the cars it can use. A car then never waits for the Job controller,
# the scheduler and the node agent between two units, even when every car of a fleet ends
# a unit within the same seconds (a job's first wave does); and a Job's pods fill exactly
# its cells' slots, so a new pod goes to the cell whose car freed one.
READY_PER_CAR = 1


def ready_slots(cars: int) -> int:
    """Units that may wait ready at the gateway for ``cars`` eligible cars (or GPUs)."""
    return READY_PER_CAR * max(cars, 0)


# ---- exit codes: how a pod ends, for the Job's podFailurePolicy -------------------------

EXIT_FAILED = 1  # this attempt failed; the Job retries the unit (backoffLimitPerIndex)
# The pod asks for what cars cannot do, or what its namespace may not: retrying cannot help.
EXIT_BAD_SPEC = 2
EXIT_MODEL = 3  # the model cannot be fetched or loaded: retrying cannot help
EXIT_RETRY_ELSEWHERE = 75  # EX_TEMPFAIL: no car could take it now; not the unit's fault
# Stopped because the pod was deleted (128 + SIGTERM, as a kubelet reports it). No Job
# rule names it: an eviction's DisruptionTarget condition is ignored by its own rule, a
# plain delete counts against the unit's retries.
EXIT_STOPPED = 143
FAIL_JOB_EXIT_CODES = (EXIT_BAD_SPEC, EXIT_MODEL)

REASON_UNSUPPORTED = "UnsupportedPodSpec"
REASON_INVALID_INPUT = "InvalidTaskInput"
REASON_MODEL_LOAD_FAILED = "ModelLoadFailed"
REASON_POD_DELETED = "PodDeleted"
# The pod's namespace is not one its cell's pool allows (FleetPool spec.namespaceSelector).
REASON_NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
_RETRY_ELSEWHERE = frozenset({"NoEligibleCar", "OfferTimeout", "CarLost"})
_MODEL = frozenset({"ModelHashMismatch", "ModelFetchFailed", REASON_MODEL_LOAD_FAILED})
_BAD_SPEC = frozenset({REASON_UNSUPPORTED, REASON_INVALID_INPUT, REASON_NAMESPACE_NOT_ALLOWED})


def exit_code(reason: str) -> int:
    """The container exit code a pod that failed for ``reason`` ends with."""
    if reason in _RETRY_ELSEWHERE:
        return EXIT_RETRY_ELSEWHERE
    if reason in _MODEL:
        return EXIT_MODEL
    if reason in _BAD_SPEC:
        return EXIT_BAD_SPEC
    if reason == REASON_POD_DELETED:
        return EXIT_STOPPED
    return EXIT_FAILED


# ---- the termination summary: a finished pod's figures, for the operator ----------------

MAX_SUMMARY_CARS = 64  # a termination message is at most 4 KiB; a unit rarely sees more
MAX_CAR_ID = 128
_MAX_COUNT = 10**9


@dataclass(frozen=True, slots=True)
class TerminationSummary:
    """What a pod on a cell did, as its container's termination message.

    Attributes:
        items: Items whose results the unit holds.
        cars: Distinct cars that ran it (at most ``MAX_SUMMARY_CARS``).
        moves: Times its task moved to another car.
        energy_wh: Energy used, in Wh (finite, ≥ 0).
        energy_modelled: Whether any of that energy was modelled, not measured.
        disagreements: Times its copies' results disagreed (redundancy ≥ 2).
        cached: The unit's result existed already; nothing ran.
    """

    items: int
    cars: tuple[str, ...] = ()
    moves: int = 0
    energy_wh: float = 0.0
    energy_modelled: bool = False
    disagreements: int = 0
    cached: bool = False

    def __post_init__(self) -> None:
        _check_count("items", self.items)
        _check_count("moves", self.moves)
        _check_count("disagreements", self.disagreements)
        if not isinstance(self.energy_wh, int | float) or isinstance(self.energy_wh, bool):
            raise ValueError(f"energyWh: {self.energy_wh!r} is not a number")
        if not (math.isfinite(self.energy_wh) and self.energy_wh >= 0):
            raise ValueError(f"energyWh: {self.energy_wh!r} is not a finite number ≥ 0")
        if len(self.cars) > MAX_SUMMARY_CARS:
            raise ValueError(f"cars: {len(self.cars)} entries, at most {MAX_SUMMARY_CARS}")
        for i, car in enumerate(self.cars):
            if not isinstance(car, str) or not 0 < len(car) <= MAX_CAR_ID:
                raise ValueError(f"cars[{i}]: not a car id of 1..{MAX_CAR_ID} characters")

    @classmethod
    def of(
        cls,
        items: int,
        cars: Sequence[str],
        moves: int,
        energy_wh: float,
        energy_modelled: bool,
        disagreements: int,
        *,
        cached: bool = False,
    ) -> TerminationSummary:
        """A summary from gateway-side figures: cars deduplicated, sorted and capped,
        energy made finite (a non-finite figure counts as 0)."""
        energy = energy_wh if math.isfinite(energy_wh) and energy_wh > 0 else 0.0
        distinct = sorted({c[:MAX_CAR_ID] for c in cars if c})[:MAX_SUMMARY_CARS]
        return cls(
            items=items,
            cars=tuple(distinct),
            moves=moves,
            energy_wh=round(energy, 6),
            energy_modelled=energy_modelled,
            disagreements=disagreements,
            cached=cached,
        )

    def to_json(self) -> str:
        """The compact JSON the pod's termination message carries."""
        doc: dict[str, Any] = {
            "items": self.items,
            "cars": list(self.cars),
            "moves": self.moves,
            "energyWh": self.energy_wh,
            "energyModelled": self.energy_modelled,
            "disagreements": self.disagreements,
        }
        if self.cached:
            doc["cached"] = True
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TerminationSummary:
        """Reads a summary back, validating every field.

        Raises:
            ValueError: Not a summary; the message names the field at fault.
        """
        try:
            doc = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ValueError(f"not a termination summary: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a termination summary: not a JSON object")
        unknown = set(doc) - _SUMMARY_KEYS
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: not a field of a termination summary")
        cars = doc.get("cars", [])
        if not isinstance(cars, list):
            raise ValueError("cars: not a list")
        return cls(
            items=_int(doc, "items", required=True),
            cars=tuple(cars),
            moves=_int(doc, "moves"),
            energy_wh=_number(doc, "energyWh"),
            energy_modelled=_bool(doc, "energyModelled"),
            disagreements=_int(doc, "disagreements"),
            cached=_bool(doc, "cached"),
        )


_SUMMARY_KEYS = frozenset(
    {"items", "cars", "moves", "energyWh", "energyModelled", "disagreements", "cached"}
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a summary may hold")


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise ValueError(f"{name}: {value!r} is not a whole number in 0..{_MAX_COUNT}")


def _int(doc: Mapping[str, Any], key: str, *, required: bool = False) -> int:
    if key not in doc:
        if required:
            raise ValueError(f"{key}: missing")
        return 0
    value = doc[key]
    _check_count(key, value)
    return int(value)


def _number(doc: Mapping[str, Any], key: str) -> float:
    value = doc.get(key, 0.0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key}: {value!r} is not a number")
    return float(value)


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: {value!r} is not true or false")
    return value


# ---- the parkfleet.io/Cars condition of a cell's Node -----------------------------------

CARS_CONDITION = "parkfleet.io/Cars"


@dataclass(frozen=True, slots=True)
class CarCounts:
    """A cell's cars as its Node's ``parkfleet.io/Cars`` condition shows them.

    Attributes:
        cars_connected: Cars with an open stream.
        cars_eligible: Cars the owner policy allows to work now.
        cars_busy: Cars running (or offered) a task.
        gpus: GPUs of eligible cars, busy or not (the Node's allocatable).
        max_gpu_memory_mib: Largest GPU memory among connected cars.
    """

    cars_connected: int = 0
    cars_eligible: int = 0
    cars_busy: int = 0
    gpus: int = 0
    max_gpu_memory_mib: int = 0


_CARS_KEYS = (
    ("connected", "cars_connected"),
    ("eligible", "cars_eligible"),
    ("busy", "cars_busy"),
    ("gpus", "gpus"),
    ("max-gpu-memory-mib", "max_gpu_memory_mib"),
)


def cars_condition_message(counts: CarCounts) -> str:
    """The condition's message, e.g. ``connected=40 eligible=12 busy=3 ...``."""
    return " ".join(f"{key}={getattr(counts, attr)}" for key, attr in _CARS_KEYS)


def parse_cars_condition(conditions: Sequence[Mapping[str, Any]] | None) -> CarCounts | None:
    """Reads the counts back from a Node's conditions; None when it has no such condition.

    Raises:
        ValueError: The condition is there but its message is not one
            :func:`cars_condition_message` wrote.
    """
    for cond in conditions or ():
        if cond.get("type") != CARS_CONDITION:
            continue
        values: dict[str, int] = {}
        for part in str(cond.get("message", "")).split():
            key, _, value = part.partition("=")
            if not value.isdigit() or len(value) > 12:
                raise ValueError(f"{CARS_CONDITION}: {part!r} is not key=count")
            values[key] = int(value)
        fields = {attr: values.get(key, 0) for key, attr in _CARS_KEYS}
        return CarCounts(**fields)
    return None


# ---- model references: where a pod or a job may say its model comes from ----------------

MAX_MODEL_URI = 2048  # the CRD's spec.model.uri maxLength
# What older pods and jobs wrote for "the gateways' store": the same as no URI.
_STORE_URI = "gateway:"


def check_model_uri(uri: str) -> str:
    """A model URI a pod (``PARKFLEET_MODEL_URI``) or a job (``spec.model.uri``) gives,
    checked: ``""`` for none, or an ``https://`` or ``s3://bucket/key`` URI the gateway
    itself fetches (an ``s3://`` one with the pod's object-store Secret) and checks
    against the model's sha256.

    Cars get models only from their gateway, by hash (decision 5): a location for a car
    to fetch (``file://``, ``http://``, a path, ...) would let any cluster user reach into
    a car owner's home, so it is refused here, before any car sees it.

    Raises:
        ValueError: What is wrong with it (the caller names the field).
    """
    if uri in ("", _STORE_URI):
        return ""
    if len(uri) > MAX_MODEL_URI:
        raise ValueError(f"longer than {MAX_MODEL_URI} characters")
    if not uri.isprintable() or any(c.isspace() for c in uri):
        raise ValueError("holds spaces or control characters")
    if is_s3_uri(uri):
        location = parse_s3_uri(uri)  # its ValueError says what is wrong
        if not location.key or location.key.endswith("/"):
            raise ValueError("an s3:// model URI names one object: s3://bucket/key")
        return uri
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme != "https":
        what = f"{scheme}://" if scheme else "a path (not a URI)"
        raise ValueError(
            f"{what} is not a model source: a model comes from the gateways' store (by name "
            "or sha256) or from an https:// or s3:// URI the gateway fetches and checks; "
            "cars never fetch from a location a pod or a job names"
        )
    if not parts.hostname:
        raise ValueError("an https:// URI needs a host")
    _ = parts.port  # raises ValueError for a port that is not a number
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in a model URI would show in the pod's spec; not allowed")
    return uri
