"""Masks (T, B) of 0/1: right-padded lengths, or arbitrary patterns.

At a masked step the state is carried over, h_t = h_{t-1}, and the step's
loss term is dropped, so masked steps contribute exactly zero gradient.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASKS", "mask_from_lengths", "make_mask"]

MASKS = ("none", "lengths", "random")


def mask_from_lengths(lengths, steps: int) -> np.ndarray:
    """Right-padded mask: m[t, b] = 1 for t < lengths[b], else 0.  Shape (T, B)."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be a 1-d integer array, got {lengths.dtype} {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > steps):
        raise ValueError(f"lengths must lie in [0, {steps}], got {lengths.min()}..{lengths.max()}")
    return (np.arange(steps)[:, None] < lengths[None, :]).astype(np.float64)


def make_mask(kind: str, rng: np.random.Generator, steps: int, batch: int) -> np.ndarray:
    """A (T, B) mask of ``kind``.

    kind: "none" (all ones, draws nothing), "lengths" (right padding, each
        length uniform in 1 .. T) or "random" (each entry 1 with probability 0.7).
    rng: the generator every draw comes from.
    """
    if kind == "none":
        return np.ones((steps, batch))
    if kind == "lengths":
        return mask_from_lengths(rng.integers(1, steps + 1, size=batch), steps)
    if kind == "random":
        return (rng.random((steps, batch)) < 0.7).astype(np.float64)
    raise ValueError(f"mask={kind!r} is not one of {', '.join(MASKS)}")
