"""InferenceJob: one model over many items on a pool's cars, every result exactly once.

The CRD (``crds/inferencejobs.parkfleet.io.yaml``) validates; this model reads an
already-valid object, applies the schema's defaults and splits the items into units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parkfleet.contract import check_model_uri

__all__ = ["InferenceJobSpec", "Unit"]


@dataclass(frozen=True)
class Unit:
    """A work unit: items ``[start, end)``; Kubernetes sees one pod per unit."""

    index: int
    start: int
    end: int

    @property
    def items(self) -> int:
        """How many items the unit holds."""
        return self.end - self.start


@dataclass(frozen=True)
class InferenceJobSpec:
    """An InferenceJob's spec, defaults applied.

    Attributes:
        name: The job's name.
        namespace: Its namespace.
        pool: The FleetPool that runs it.
        model_name: A model name in the gateways' store ("" when by hash).
        model_sha256: The model's content hash ("" when by name).
        model_uri: An ``https://`` URI the gateways download the model from when their
            store lacks ``model_sha256`` ("" for none; cars never fetch from it).
        runtime: The runtime (image) the pods ask for.
        input_name: The model input ("" = the model's first).
        output_names: Outputs to keep (empty = all).
        input_path: The input: a path in the namespace's area of the data volume, or an
            ``s3://`` URI in the job's object store ("" with a ConfigMap).
        input_configmap: ``NAME/KEY`` of a ConfigMap with the items as JSON ("" if none).
        items: Items to run.
        items_per_unit: Items per work unit.
        parallelism: Units at once (``spec.parallelism``; may change after creation).
        suspend: Whether the job is paused (``spec.suspend``; may change after creation).
        batch_size: Items per inference call.
        gpu_memory_mib: GPU memory per task.
        copies: Cars each unit runs on (redundancy).
        compare: ``MODE:OUTPUT:TOLERANCE`` for redundancy ≥ 2 ("" otherwise).
        spot_check_fraction: At copies 1, units also run on a second car and compared
            (``redundancy.spotCheckFraction``); None takes the pool's.
        deadline_s: Seconds until ``DeadlineExceeded`` (None: none).
        retries: Retries per unit.
        output_path: The results: a directory in the namespace's area of the data volume,
            or an ``s3://bucket/prefix`` in the job's object store.
        object_store_secret: The ``parkfleet.io/object-store`` Secret (in the job's
            namespace) its ``s3://`` URIs are read and written with ("" for none).
        text_tokenizer: The input is a ``.jsonl`` of texts tokenised with this
            ``tokenizer.json`` (a volume path or an ``s3://`` URI); "" when the input is
            tensors.
        text_tokenizer_sha256: The tokenizer's sha256 when the job pins it ("").
        text_field: The key of the text in a line that is a JSON object.
        max_tokens: Texts are truncated to this many tokens.
    """

    name: str
    namespace: str
    pool: str
    model_name: str
    model_sha256: str
    model_uri: str
    runtime: str
    input_name: str
    output_names: tuple[str, ...]
    input_path: str
    input_configmap: str
    items: int
    items_per_unit: int
    parallelism: int
    suspend: bool
    batch_size: int
    gpu_memory_mib: int
    copies: int
    compare: str
    spot_check_fraction: float | None
    deadline_s: int | None
    retries: int
    output_path: str
    object_store_secret: str = ""
    text_tokenizer: str = ""
    text_tokenizer_sha256: str = ""
    text_field: str = "text"
    max_tokens: int = 256

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> InferenceJobSpec:
        """Reads an InferenceJob object (a dict from the API)."""
        meta = obj["metadata"]
        spec: Mapping[str, Any] = obj["spec"]
        model: Mapping[str, Any] = spec["model"]
        inp: Mapping[str, Any] = spec["input"]
        red: Mapping[str, Any] = spec.get("redundancy") or {}
        cmp: Mapping[str, Any] = red.get("compare") or {}
        compare = ""
        if cmp:
            compare = f"{cmp['mode']}:{cmp['output']}:{cmp.get('tolerance', 0.0001)}"
        deadline = spec.get("deadlineSeconds")
        text: Mapping[str, Any] = inp.get("text") or {}
        out: Mapping[str, Any] = spec["output"]
        spot = red.get("spotCheckFraction")
        return cls(
            name=str(meta["name"]),
            namespace=str(meta.get("namespace") or "default"),
            pool=str(spec["pool"]),
            model_name=str(model.get("name", "")),
            model_sha256=str(model.get("sha256", "")),
            model_uri=str(model.get("uri", "")),
            runtime=str(model.get("runtime", "onnxruntime")),
            input_name=str(model.get("inputName", "")),
            output_names=tuple(model.get("outputNames") or ()),
            input_path=str(inp.get("path") or inp.get("uri") or ""),
            input_configmap=(
                f"{inp['configMap']['name']}/{inp['configMap']['key']}"
                if inp.get("configMap")
                else ""
            ),
            items=int(inp["items"]),
            items_per_unit=int(spec.get("itemsPerUnit", 1000)),
            parallelism=int(spec.get("parallelism", 10)),
            suspend=bool(spec.get("suspend", False)),
            batch_size=int(spec.get("batchSize", 32)),
            gpu_memory_mib=int(spec.get("gpuMemoryMiB", 0)),
            copies=int(red.get("copies", 1)),
            compare=compare,
            spot_check_fraction=float(spot) if spot is not None else None,
            deadline_s=int(deadline) if deadline is not None else None,
            retries=int(spec.get("retriesPerUnit", 3)),
            output_path=str(out.get("path") or out.get("uri") or ""),
            object_store_secret=str((spec.get("objectStore") or {}).get("secretName", "")),
            text_tokenizer=str(text.get("tokenizer", "")),
            text_tokenizer_sha256=str(text.get("tokenizerSha256", "")),
            text_field=str(text.get("field", "text")),
            max_tokens=int(text.get("maxTokens", 256)),
        )

    @property
    def model_problem(self) -> str | None:
        """Why ``spec.model.uri`` cannot be used, or None. The CRD refuses such a URI; an
        object stored before that rule may still hold one, and it is never passed on."""
        try:
            check_model_uri(self.model_uri)
        except ValueError as exc:
            return f"spec.model.uri: {exc}"
        if self.model_uri not in ("", "gateway:") and not self.model_sha256:
            return "spec.model.uri needs spec.model.sha256: the gateways check what they fetch"
        return None

    @property
    def unit_count(self) -> int:
        """How many work units the items make."""
        return math.ceil(self.items / self.items_per_unit)

    @property
    def parallel_units(self) -> int:
        """Units the Job runs at once: ``parallelism``, at most the unit count."""
        return min(self.parallelism, self.unit_count)

    def unit(self, index: int) -> Unit:
        """Work unit ``index``."""
        start = index * self.items_per_unit
        return Unit(index, start, min(self.items, start + self.items_per_unit))

    def unit_items(self, indexes: set[int]) -> int:
        """Items in the given units."""
        return sum(self.unit(i).items for i in indexes if 0 <= i < self.unit_count)
