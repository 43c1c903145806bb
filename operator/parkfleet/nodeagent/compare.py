"""Whether two cars' results for the same items agree (redundancy ≥ 2).

GPU results are not bit-identical across hardware, so equality has a tolerance:
``argmax`` (classifiers: the winning class per item), ``absolute`` (max |a - b|) or
``relative`` (max |a - b| / max(|b|, tiny)).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["agree", "majority"]


def agree(
    a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], mode: str, tolerance: float
) -> bool:
    """Whether ``a`` and ``b`` (same items, same output) agree under ``mode``."""
    if a.shape != b.shape:
        return False
    if mode == "argmax":
        if a.ndim <= 1:
            return bool(np.array_equal(a, b))
        return bool(np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)))
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    if not (np.all(np.isfinite(fa)) and np.all(np.isfinite(fb))):
        return False
    diff = np.abs(fa - fb)
    if mode == "absolute":
        return bool(diff.max(initial=0.0) <= tolerance)
    if mode == "relative":
        scale = np.maximum(np.abs(fb), np.finfo(np.float64).tiny)
        return bool((diff / scale).max(initial=0.0) <= tolerance)
    raise ValueError(f"unknown comparison mode {mode!r}")


def majority(results: list[npt.NDArray[np.generic]], mode: str, tolerance: float) -> int | None:
    """The index of a result that more than half of ``results`` agree with, or None."""
    need = len(results) // 2 + 1
    for i, r in enumerate(results):
        if sum(agree(r, other, mode, tolerance) for other in results) >= need:
            return i
    return None
