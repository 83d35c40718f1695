"""Named parameters with gate blocks.

A cell's parameters are a dict of named float arrays.  Each array is described
by a :class:`ParamSpec` that also says how it splits into gate blocks, so that
any element can be reported as "block z of U0, row 3, column 7".

A recurrent matrix ``U0`` of shape ``(H, 3H)`` whose columns hold the blocks
``r | z | h`` is declared as ``ParamSpec("U0", (H, 3 * H), blocks=("r", "z", "h"),
block_axis=1)``.  Every block has the same width along ``block_axis``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ParamSpec", "validate_params"]


@dataclass(frozen=True)
class ParamSpec:
    """Name, shape and gate blocks of one parameter array.

    name: the key of the array in the parameter dict.
    shape: its shape.
    blocks: names of equal-width gate blocks along ``block_axis``, or ``None``.
    block_axis: the axis the blocks are laid along.
    layer: the stacked layer the parameter belongs to (-1 below the first, as an
        embedding; ``None`` for the readout).
    rows_indexed_by: for a parameter the forward pass reads by row lookup only
        (an embedding, ``E[batch.x]``), the name of the batch array holding the
        integer row ids; rows not named there cannot reach the loss.  ``None``:
        a dense parameter.
    """

    name: str
    shape: tuple[int, ...]
    blocks: tuple[str, ...] | None = None
    block_axis: int = -1
    layer: int | None = None
    rows_indexed_by: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.rows_indexed_by is not None and (
                not isinstance(self.rows_indexed_by, str) or not self.rows_indexed_by
                or not self.shape):
            raise ValueError(
                f"parameter {self.name!r}: rows_indexed_by={self.rows_indexed_by!r} must name "
                "the batch array of row ids, and the parameter must have rows")
        if self.blocks is not None:
            if not -len(self.shape) <= self.block_axis < len(self.shape):
                raise ValueError(
                    f"parameter {self.name!r}: its blocks lie along axis {self.block_axis}, "
                    f"which a parameter of shape {self.shape} does not have")
            if not len(self.blocks):
                raise ValueError(f"parameter {self.name!r}: blocks names no block")
            axis_len = self.shape[self.block_axis]
            if axis_len % len(self.blocks):
                raise ValueError(
                    f"parameter {self.name!r}: axis {self.block_axis} of length "
                    f"{axis_len} does not split into {len(self.blocks)} blocks"
                )

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def block_width(self) -> int:
        return self.shape[self.block_axis] // len(self.blocks)

    def block_of(self, index: tuple[int, ...]) -> str | None:
        """The gate block holding element ``index``, or ``None`` when unblocked."""
        if self.blocks is None:
            return None
        return self.blocks[index[self.block_axis] // self.block_width()]

    def block_slices(self) -> dict[str, tuple[slice, ...]]:
        """``{block name: index tuple}`` selecting each block of the array."""
        if self.blocks is None:
            return {}
        width = self.block_width()
        axis = self.block_axis % len(self.shape)
        out = {}
        for k, name in enumerate(self.blocks):
            idx = [slice(None)] * len(self.shape)
            idx[axis] = slice(k * width, (k + 1) * width)
            out[name] = tuple(idx)
        return out


def validate_params(specs, params, *, what="parameters") -> None:
    """Raise ValueError unless ``params`` has exactly the names and shapes of ``specs``."""
    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unexpected " + ", ".join(extra))
        raise ValueError(f"{what}: " + "; ".join(parts))
    for name, spec in expected.items():
        value = np.asarray(params[name])
        if value.shape != spec.shape:
            raise ValueError(
                f"{what}: {name} has shape {value.shape}, expected {spec.shape}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{what}: {name} has dtype {value.dtype}, expected a float dtype")
