"""Running a model: ONNX Runtime sessions, off the event loop.

``OrtCompute`` owns a small thread pool; every session creation and every inference runs
there, so the agent's event loop never blocks. One ``OrtCompute`` can serve many agents
(the simulator shares one), and sessions are cached by the model's sha256.

``ModelledCompute`` wraps it for large simulated fleets: the outputs are still computed
for real (on the shared pool), but each car's rate is held to a modelled items/s.

What ONNX Runtime raises (its exceptions share no base class) becomes ``ModelLoadError``
or ``InferenceFailed`` here, so the agent tells a model's failure from a bug of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from parkfleet.protocol.limits import ORT_ELEMENT_TYPES
from parkfleet.protocol.padding import pad_concat

__all__ = [
    "Compute",
    "InferenceFailed",
    "ModelLoadError",
    "ModelSession",
    "ModelledCompute",
    "OrtCompute",
    "WrappedSession",
    "available_providers",
]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelLoadError(Exception):
    """The runtime rejected the model (its message names the runtime's error)."""


class InferenceFailed(Exception):
    """The runtime failed on these inputs (its message names the runtime's error)."""


def available_providers() -> list[str]:
    """The execution providers this machine can use, CUDA first when present."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in (CUDA, CPU) if p in have]


class ModelSession(Protocol):
    """A loaded model that runs inputs in batches."""

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses."""
        ...

    @property
    def output_names(self) -> list[str]:
        """The model's output names, in order."""
        ...

    @property
    def input_types(self) -> dict[str, str]:
        """The model's inputs, in order: name -> element type as numpy names it ("" when
        the car link carries no such type)."""
        ...

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        """Runs ``inputs`` (input name -> array, first dimension = items, the same for
        all) in slices of ``batch_size``.

        Returns:
            One array per output name, first dimension = items.

        Raises:
            InferenceFailed: The runtime failed on these inputs.
        """
        ...


class Compute(Protocol):
    """Turns verified model bytes into sessions."""

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        """Returns a (possibly cached) session for the model with this hash.

        Raises:
            ModelLoadError: The runtime rejected the model.
        """
        ...


def _run(session: Any, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
    try:
        return session.run(names, feeds)
    except Exception as e:  # whatever ORT raises: the model or its inputs, not this code
        raise InferenceFailed(f"{type(e).__name__}: {e}") from e


def _run_batches(
    session: Any,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    batch_size: int,
) -> list[np.ndarray]:
    # Several batches per executor hop: the hop costs more than a small batch does.
    names = list(output_names)
    feeds = dict(inputs)
    n = next(iter(feeds.values())).shape[0]
    if n <= batch_size:
        return [np.asarray(o) for o in _run(session, names, feeds)]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in feeds.items()}
        outs = _run(session, names, batch)
        for acc, out in zip(parts, outs, strict=True):
            acc.append(np.asarray(out))
    # An output whose length follows the inputs' (a text's) is padded like them.
    return [pad_concat(acc) for acc in parts]


class _OrtSession:
    def __init__(self, session: Any, executor: ThreadPoolExecutor) -> None:
        self._session = session
        self._executor = executor

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    @property
    def input_types(self) -> dict[str, str]:
        return {i.name: ORT_ELEMENT_TYPES.get(str(i.type), "") for i in self._session.get_inputs()}

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            _run_batches,
            self._session,
            inputs,
            output_names,
            max(1, batch_size),
        )


class OrtCompute:
    """ONNX Runtime on a private thread pool.

    Args:
        providers: Execution providers in order of preference (default: CUDA when
            present, else CPU).
        intra_op_threads: ORT threads per inference (0 = ORT's default).
        workers: Inferences that may run at once (one per car is plenty on a real car).
        max_sessions: Sessions kept in the cache.
    """

    def __init__(
        self,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
        workers: int = 1,
        max_sessions: int = 4,
    ) -> None:
        self._providers = list(providers) if providers else available_providers()
        self._intra_op_threads = intra_op_threads
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort")
        self._sessions: OrderedDict[str, _OrtSession] = OrderedDict()
        self._max_sessions = max(1, max_sessions)
        self._lock = asyncio.Lock()

    @property
    def providers(self) -> list[str]:
        """The providers sessions are created with."""
        return list(self._providers)

    def _create(self, model: bytes) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            # From bytes: the verified model in memory is exactly what runs.
            return ort.InferenceSession(model, sess_options=options, providers=self._providers)
        except Exception as e:  # whatever ORT raises: the model is at fault, not this code
            raise ModelLoadError(f"{type(e).__name__}: {e}") from e

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        """Returns the cached session for ``sha256``, creating it from ``model`` if needed.

        Raises:
            ModelLoadError: ONNX Runtime rejected the model.
        """
        async with self._lock:
            cached = self._sessions.get(sha256)
            if cached is not None:
                self._sessions.move_to_end(sha256)
                return cached
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(self._executor, self._create, model)
            created = _OrtSession(raw, self._executor)
            self._sessions[sha256] = created
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
            return created

    def close(self) -> None:
        """Stops the thread pool (running inferences finish first)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class WrappedSession:
    """A session that adds behaviour around another one (rate limit, fault injection)."""

    def __init__(self, inner: ModelSession) -> None:
        self._inner = inner

    @property
    def providers(self) -> list[str]:
        return self._inner.providers

    @property
    def output_names(self) -> list[str]:
        return self._inner.output_names

    @property
    def input_types(self) -> dict[str, str]:
        return self._inner.input_types


class _ModelledSession(WrappedSession):
    def __init__(self, inner: ModelSession, items_per_second: float) -> None:
        super().__init__(inner)
        self._rate = items_per_second
        # When the modelled GPU is free again: calls that overlap (a runner queues the
        # next slice while one runs) take turns on it, as on a real GPU.
        self._free_at = 0.0

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        start = max(time.monotonic(), self._free_at)
        done_at = start + next(iter(inputs.values())).shape[0] / self._rate
        self._free_at = done_at
        outs = await self._inner.infer(inputs, output_names, batch_size)
        # The car's modelled GPU would have taken this long; the shared CPU was faster.
        remaining = done_at - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return outs


class ModelledCompute:
    """A shared real compute held to a modelled per-car rate.

    Args:
        inner: The shared compute that produces the real outputs.
        items_per_second: The rate one simulated car's GPU is modelled to reach.
    """

    def __init__(self, inner: Compute, items_per_second: float) -> None:
        if items_per_second <= 0:
            raise ValueError("items_per_second must be positive")
        self._inner = inner
        self._rate = items_per_second

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        """Returns the inner session, rate-limited."""
        return _ModelledSession(await self._inner.session(sha256, model), self._rate)


class _CorruptSession(WrappedSession):
    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        outs = await self._inner.infer(inputs, output_names, batch_size)
        # A faulty GPU: every result shifted (labels off by one, scores reversed).
        return [
            (o + 1) % 10
            if np.issubdtype(o.dtype, np.integer)
            else np.ascontiguousarray(o[..., ::-1])
            for o in outs
        ]


class CorruptCompute:
    """Fault injection for tests of redundancy: a car whose results are wrong.

    Args:
        inner: The compute whose outputs get corrupted.
    """

    def __init__(self, inner: Compute) -> None:
        self._inner = inner

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        """Returns the inner session, with corrupted outputs."""
        return _CorruptSession(await self._inner.session(sha256, model))
