"""The gateway's port: the one thing its node agent knows of the gateway.

:class:`TaskPort` is what the node agent depends on: submit a task, cancel it, follow
its events, read one cell's capacity, resolve a model, release an ended task, tell the
gateway about the pools. :class:`parkfleet.gateway.Gateway` implements it. The node agent
imports this module and nothing of ``parkfleet.gateway`` (``make lint`` checks it); it
lives beside both, so that importing it loads neither. The types a task is made of live
here too, so that both sides share them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from parkfleet.contract import CarCounts
from parkfleet.objectstore import S3Credentials

if TYPE_CHECKING:
    from parkfleet.api.fleetpool import FleetPoolSpec

__all__ = [
    "GATEWAY_URI",
    "EventKind",
    "InputSource",
    "InvalidItems",
    "ModelDigestMismatch",
    "ModelFetchFailed",
    "ModelInfo",
    "ModelNotFound",
    "ModelRef",
    "ModelUnreadable",
    "OutputSpec",
    "ResultSink",
    "TaskEvent",
    "TaskPort",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "TensorSpec",
]

TaskState = Literal["Queued", "Offered", "Running", "Succeeded", "Failed", "Cancelled"]
EventKind = Literal[
    "placed",
    "accepted",
    "refused",
    "progress",
    "checkpoint",
    "moved",
    "log",
    "lost",
    "succeeded",
    "failed",
    "cancelled",
]


# What a source gives for a run of items: the one input's array, or every named input's.
Items = np.ndarray | Mapping[str, np.ndarray]


class InputSource(Protocol):
    """Where a task's inputs come from."""

    def read(self, start: int, end: int) -> Items | Awaitable[Items]:
        """Items ``[start, end)``: one array whose first dimension is the item (a model of
        one input), or a mapping of the model's input names to such arrays, all of the
        same first dimension (a model of several inputs, e.g. a text model's
        ``input_ids``, ``attention_mask``, ``token_type_ids``).

        Inputs of variable length (a text's tokens) are padded with zeros to the longest
        item of the read: the gateway reads such inputs one batch at a time, so that
        padding stays per batch (when the model leaves a dimension past the first open,
        or the source has an attribute ``padded = True``). Inputs the model does not take
        are left out.

        May return the items or an awaitable of them (do slow I/O asynchronously).
        """
        ...


class ResultSink(Protocol):
    """Where a task's results go; sees every item exactly once, in order.

    The gateway reports a task ``succeeded`` only after :meth:`complete` returned, so
    the task's event is the one signal that its results are all there.
    """

    async def write(self, first_item: int, outputs: Mapping[str, np.ndarray]) -> None:
        """Takes outputs for items starting at ``first_item`` (first dim = items).

        The arrays may be read-only views; copy them to keep them past the call.
        """
        ...

    async def complete(self) -> None:
        """Called once, after the last item's outputs were written."""
        ...


# The only model source a car is ever told: its gateway's store, by sha256 (decision 5).
GATEWAY_URI = "gateway:"


@dataclass(frozen=True)
class ModelRef:
    """A model by content hash, as cars get it: from their gateway.

    Attributes:
        sha256: Hex digest; the car verifies it before loading.
        uri: Always ``"gateway:"`` (kept on the wire, ``ModelRef.uri``, for older
            agents): cars fetch models only over their link, by sha256, never from a
            location a pod names. Anything else is refused here.
        size_bytes: Size, when known (0 otherwise).

    Raises:
        ValueError: ``uri`` is not ``"gateway:"``.
    """

    sha256: str
    uri: str = GATEWAY_URI
    size_bytes: int = 0

    def __post_init__(self) -> None:
        if self.uri != GATEWAY_URI:
            raise ValueError("a task's model comes from the gateway, by sha256, or not at all")


class InvalidItems(ValueError):
    """An input source's items are wrong (a line that is not a text, not a list of
    numbers): the task fails for its input, and running it again cannot help."""


class ModelNotFound(LookupError):
    """No model has that name or digest (or the name or digest is malformed)."""


class ModelUnreadable(ValueError):
    """The model's file is there, but it is not a model the runtime can load."""


class ModelFetchFailed(Exception):
    """The gateway could not fetch a model from the https:// or s3:// URI a pod named.

    Attributes:
        reason: The pod's failure reason.
    """

    reason = "ModelFetchFailed"


class ModelDigestMismatch(ModelFetchFailed):
    """What the gateway fetched does not have the sha256 the pod named; it was not kept."""

    reason = "ModelHashMismatch"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model declares it: what a tensor of it must look like.

    Attributes:
        name: The tensor's name.
        dtype: Its element type as numpy names it (``float32``, ``int64``, ...); "" when
            the model's type has no wire form (it cannot travel on the car link at all).
        item_shape: Its dimensions past the first (the items); None where the model
            leaves a dimension open (a text's length).
    """

    name: str
    dtype: str
    item_shape: tuple[int | None, ...]

    @property
    def variable(self) -> bool:
        """Whether a dimension past the first is open: items may differ in length."""
        return None in self.item_shape


# An output as the model declares it: what a car's results for it must look like.
OutputSpec = TensorSpec


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A resolved model: where cars get it and what it takes and gives.

    Attributes:
        ref: The model by content hash.
        input_name: Its first input.
        outputs: Its outputs, in order, as it declares them.
        inputs: Its inputs, in order, as it declares them (empty when not known: the
            one input ``input_name``).
    """

    ref: ModelRef
    input_name: str
    outputs: tuple[OutputSpec, ...]
    inputs: tuple[TensorSpec, ...] = ()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Its outputs' names, in order."""
        return tuple(o.name for o in self.outputs)


@dataclass(frozen=True)
class TaskSpec:
    """A task: a range of items of one model, to run on one car of one cell.

    Attributes:
        task_id: Unique id (e.g. the pod's uid).
        cell: The cell that runs it.
        runtime: A runtime cars announce, e.g. ``"onnxruntime"``.
        model: The model.
        input_name: The model's input (its first one, when it has several).
        output_names: The model outputs to return.
        batch_size: Items per inference call on the car.
        item_start: First item.
        item_end: One past the last item.
        inputs: Where inputs come from.
        sink: Where results go.
        gpu_memory_mib: GPU memory the task needs.
        checkpoint_interval_s: How often the car checkpoints.
        car_wait_s: How long the task may wait for a car before failing with
            ``NoEligibleCar``; None takes the gateway's default.
        group: Tasks of one group (copies of a redundant unit) run on distinct cars.
        output_specs: What the model declares of the outputs asked for; a car's results
            are checked against them as they arrive (empty: names only).
        avoid_cars: Cars not to run it on, nor any car of their owners (a unit run
            again because one of these delivered it unchecked and was quarantined).
        input_specs: The model's inputs as it declares them (``ModelInfo.inputs``).
            With more than one, the task feeds them all, from the mapping its source
            returns; with one or none, ``input_name`` is fed the source's array. An input
            of variable length (:attr:`TensorSpec.variable`) is read and sent one batch
            at a time, padded per batch; each is checked for its dtype on both ends.
        job: The job whose unit it is (an InferenceJob's uid; "" for a plain pod): the
            gateway measures items/s per car per job, and estimates a unit's run time
            from it for placement (``gateway/estimate.py``).
    """

    task_id: str
    cell: str
    runtime: str
    model: ModelRef
    input_name: str
    output_names: tuple[str, ...]
    batch_size: int
    item_start: int
    item_end: int
    inputs: InputSource = field(repr=False, compare=False)
    sink: ResultSink = field(repr=False, compare=False)
    gpu_memory_mib: int = 0
    checkpoint_interval_s: float = 5.0
    car_wait_s: float | None = None
    group: str = ""
    output_specs: tuple[OutputSpec, ...] = ()
    avoid_cars: tuple[str, ...] = ()
    input_specs: tuple[TensorSpec, ...] = ()
    job: str = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input the task feeds, in the model's order (the first is ``input_name``)."""
        if len(self.input_specs) > 1:
            return tuple(s.name for s in self.input_specs)
        return (self.input_name,)

    @property
    def padded_per_batch(self) -> bool:
        """Whether an input varies in length: read, sent and padded one batch at a time."""
        return any(s.variable for s in self.input_specs)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to a task.

    Attributes:
        kind: placed, accepted, refused, progress, checkpoint, moved, log, lost,
            succeeded, failed or cancelled.
        task_id: The task.
        cell: Its cell.
        attempt: The attempt it concerns (0 before the first placement).
        car_id: The car concerned (for ``moved``: the new car).
        from_car: For ``moved`` and ``lost``: the car the task left.
        items_done: Items whose results reached the sink.
        checkpoint: The last checkpoint (first item still to do).
        reason: CamelCase reason for refused, lost, failed, cancelled, moved.
        message: Human-readable detail.
        lines: Log lines (``log``).
        energy_wh: Energy the car reported (``succeeded`` / ``failed``).
        energy_modelled: Whether that energy was modelled rather than measured.
    """

    kind: EventKind
    task_id: str
    cell: str
    attempt: int = 0
    car_id: str = ""
    from_car: str = ""
    items_done: int = 0
    checkpoint: int = 0
    reason: str = ""
    message: str = ""
    lines: tuple[str, ...] = ()
    energy_wh: float = 0.0
    energy_modelled: bool = False


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of a task.

    Attributes:
        task_id: The task.
        cell: Its cell.
        state: Queued, Offered, Running, Succeeded, Failed or Cancelled.
        attempt: Current attempt (0 before the first placement).
        car_id: The car holding it now ("" when none).
        items_done: Items whose results reached the sink.
        checkpoint: The last checkpoint (first item still to do).
        cars: Every car that held it, in order.
        moves: How many times it moved to another car.
        reason: Why it failed or was cancelled.
        message: Detail.
        energy_wh: Energy reported for it across attempts.
        energy_modelled: Whether any of that energy was modelled.
    """

    task_id: str
    cell: str
    state: TaskState
    attempt: int
    car_id: str
    items_done: int
    checkpoint: int
    cars: tuple[str, ...]
    moves: int
    reason: str
    message: str
    energy_wh: float
    energy_modelled: bool


class TaskPort(Protocol):
    """What the node agent asks of the gateway (implemented by ``Gateway``)."""

    async def submit(self, spec: TaskSpec) -> None:
        """Queues a task for its cell; its events follow on :meth:`events`.

        Raises:
            ValueError: The spec is invalid or its id belongs to a live task.
        """
        ...

    async def cancel(self, task_id: str, reason: str) -> None:
        """Cancels a task (its car is told to stop); no-op when unknown or ended."""
        ...

    def events(self) -> AsyncIterator[TaskEvent]:
        """A new subscription to every task's events, from now on."""
        ...

    def capacity(self, cell: str) -> CarCounts:
        """One cell's cars now (zeros for a cell with no car)."""
        ...

    async def resolve_model(
        self,
        name: str = "",
        sha256: str = "",
        uri: str = "",
        credentials: S3Credentials | None = None,
    ) -> ModelInfo:
        """A model of the gateway's store, by name or by digest (cached; no blocking I/O
        on the caller's loop).

        Args:
            name: A name of the store.
            sha256: A digest (wins over ``name``).
            uri: An ``https://`` or ``s3://bucket/key`` URI (see
                :func:`parkfleet.contract.check_model_uri`) the gateway downloads the
                model from when its store lacks ``sha256`` (required with it); the
                download is checked against ``sha256`` and stored, and cars then get the
                model by hash as any other. Concurrent calls for one digest from one
                location share one download.
            credentials: The object store an ``s3://`` URI is in and its keys (the pod's
                object-store Secret); required for one.

        Raises:
            ModelNotFound: No such model, or a malformed name or digest.
            ModelUnreadable: The file is not a model the runtime loads.
            ModelFetchFailed: ``uri`` is refused, or the download failed (its
                :class:`ModelDigestMismatch` subclass: the bytes are not ``sha256``).
        """
        ...

    def record_verdict(self, task_id: str, agreed: bool) -> list[str]:
        """Tells the gateway the vote on an ended task not yet released: whether its
        results agreed with the result kept for its unit. The gateway counts it for or
        against the cars that delivered them (their reputation).

        Returns:
            The ids of the cars this verdict quarantined (they get no more work).
        """
        ...

    def trusted(self, car_id: str) -> bool:
        """Whether a car has a long clean record (adaptive replication checks it less)."""
        ...

    def quarantined(self, car_id: str) -> bool:
        """Whether a car is quarantined (its results disagreed too often: no more work)."""
        ...

    def release(self, task_id: str) -> None:
        """Forgets an ended task (the caller has its outcome). The cars that took copies
        of its group are forgotten with the group's last task."""
        ...

    def set_pools(self, pools: Sequence[FleetPoolSpec]) -> None:
        """Lets the FleetPools decide every car's cell and policy floor."""
        ...

    def set_revocations(self, revocations: Mapping[str, float]) -> None:
        """Takes the fleet admin's revocation list (``parkfleet.revocations``): car id ->
        the moment its certificates issued until then stop being accepted."""
        ...
