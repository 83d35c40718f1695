"""A batch of sequences: inputs, targets and mask, time-major."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Batch", "validate_mask"]


@dataclass
class Batch:
    """Inputs, targets and mask of one batch, time-major.

    x: dense inputs ``(T, B, D)`` float, or token ids ``(T, B)`` int.
    y: targets; ``(T, B)`` int for a per-step readout, ``(B,)`` int for a pooled one.
    mask: ``(T, B)`` of 0.0 / 1.0; a masked step carries the state over.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.x.shape[0])

    @property
    def size(self) -> int:
        return int(self.x.shape[1])

    def copy(self) -> "Batch":
        return Batch(self.x.copy(), self.y.copy(), self.mask.copy())


def validate_mask(mask, steps: int, batch: int) -> np.ndarray:
    """Return ``mask`` as float64 ``(T, B)``; ValueError names what is wrong."""
    mask = np.asarray(mask)
    if mask.shape != (steps, batch):
        raise ValueError(f"mask has shape {mask.shape}, expected (T, B) = {(steps, batch)}")
    if mask.size and not np.all((mask == 0) | (mask == 1)):
        bad = mask[(mask != 0) & (mask != 1)].ravel()[0]
        raise ValueError(f"mask must hold only 0 and 1, found {float(bad)!r}")
    return mask.astype(np.float64)
