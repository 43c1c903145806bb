"""Inputs of variable length on the car link: padded per batch, with zeros.

A text's tokens differ in number from item to item, but a tensor is rectangular: the
gateway's source pads each chunk to its longest item (a chunk of such inputs holds at most
one batch), and a car that merges several chunks into one model call pads them again to
the longest of them. Zeros are what a text model's masks expect (``attention_mask`` 0:
ignored). The same goes for outputs whose length follows the inputs'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_concat", "same_item_shape"]


def same_item_shape(arrays: Sequence[np.ndarray]) -> bool:
    """Whether the arrays agree on every dimension past the first (concatenating needs no
    padding)."""
    shape = arrays[0].shape[1:]
    return all(a.shape[1:] == shape for a in arrays[1:])


def pad_concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The arrays one after the other along the first dimension, each padded with zeros at
    the end of every further dimension to the largest of them.

    Args:
        arrays: One or more arrays of one dtype and one number of dimensions.

    Returns:
        The first array itself when it is the only one; else a new array.

    Raises:
        ValueError: The arrays differ in dtype or number of dimensions.
    """
    if len(arrays) == 1:
        return arrays[0]
    if same_item_shape(arrays):
        return np.concatenate(arrays, axis=0)
    first = arrays[0]
    if any(a.ndim != first.ndim or a.dtype != first.dtype for a in arrays):
        raise ValueError("only arrays of one dtype and one number of dimensions pad together")
    tail = tuple(max(a.shape[d] for a in arrays) for d in range(1, first.ndim))
    out = np.zeros((sum(a.shape[0] for a in arrays), *tail), dtype=first.dtype)
    row = 0
    for a in arrays:
        out[(slice(row, row + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))] = a
        row += a.shape[0]
    return out
