"""Compare two oracles' gradients of one parameter, element by element."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck.params import ParamSpec
from gradcheck.tolerance import Tolerance, agree

__all__ = ["Comparison", "compare_gradients"]


@dataclass
class Comparison:
    """One parameter compared between two oracles.

    ``worst_index`` is the element furthest outside the tolerance (relative to
    its own bound), or the largest error when every element passes.
    """

    parameter: str
    shape: tuple[int, ...]
    oracles: tuple[str, str]
    tolerance: Tolerance
    max_abs_error: float
    max_rel_error: float
    failed: int
    kinks: int
    worst_index: tuple[int, ...]
    worst_block: str | None
    worst_values: tuple[float, float]
    blocks_failed: dict[str, int] = field(default_factory=dict)
    dtype: str = "float64"
    compared: int = 0

    @property
    def passed(self) -> bool:
        return self.failed == 0

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def as_dict(self) -> dict:
        return {
            "parameter": self.parameter,
            "shape": list(self.shape),
            "oracles": list(self.oracles),
            "verdict": self.verdict,
            "max_abs_error": _json_float(self.max_abs_error),
            "max_rel_error": _json_float(self.max_rel_error),
            "failed_elements": self.failed,
            "kink_elements": self.kinks,
            "worst_index": list(self.worst_index),
            "worst_block": self.worst_block,
            "worst_values": {self.oracles[0]: _json_float(self.worst_values[0]),
                             self.oracles[1]: _json_float(self.worst_values[1])},
            "failed_by_block": self.blocks_failed,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "dtype": self.dtype,
            "numeric_dtype": "float64",
            "compared_elements": self.compared,
        }

    def describe_worst(self) -> str:
        a, b = self.oracles
        where = f"{self.parameter}[{', '.join(str(i) for i in self.worst_index)}]"
        if self.worst_block is not None:
            where += f" (block {self.worst_block})"
        return (f"{where}: {a} = {self.worst_values[0]:.10g}, "
                f"{b} = {self.worst_values[1]:.10g}")


def _json_float(x: float):
    """JSON has no NaN or Inf: write them as strings."""
    x = float(x)
    return x if np.isfinite(x) else str(x)


def compare_gradients(spec: ParamSpec, oracles: tuple[str, str], a, b,
                      tol: Tolerance, kinks=None, where=None, dtype=None) -> Comparison:
    """Compare ``a`` and ``b`` (two oracles' gradients of ``spec``) under ``tol``.

    kinks: optional boolean array; elements flagged there that fail are counted
    as non-differentiable points, not as failures.
    where: optional boolean array; only these elements are compared (a sampled check).
    dtype: the parameter's own dtype, recorded.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    for name, arr in zip(oracles, (a, b)):
        if arr.shape != spec.shape:
            raise ValueError(f"{name} gradient of {spec.name} has shape {arr.shape}, "
                             f"expected {spec.shape}")
    ok = agree(a, b, tol)
    if where is not None:
        ok = ok | ~where                            # elements not sampled are not judged
    kink_fail = ~ok & kinks if kinks is not None else np.zeros_like(ok)
    fail = ~ok & ~kink_fail
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.abs(a - b)
        scale = np.maximum(np.abs(a), np.abs(b))
        rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), 0.0)
        # how far outside its own bound each element lies; NaN/Inf rank first
        excess = err / (tol.atol + tol.rtol * scale)
    excess = np.where(np.isfinite(a) & np.isfinite(b), excess, np.inf)
    err = np.where(np.isfinite(err), err, np.inf)
    rel = np.where(np.isfinite(rel), rel, np.inf)
    if where is not None:
        excess, err, rel = (np.where(where, v, 0.0) for v in (excess, err, rel))
    ranking = np.where(kink_fail, -1.0, excess)
    if a.size:
        flat = int(np.argmax(ranking))
        worst = tuple(int(i) for i in np.unravel_index(flat, a.shape))
        worst_values = (float(a[worst]), float(b[worst]))
    else:
        worst, worst_values = (), (0.0, 0.0)
    blocks_failed = {name: int(fail[idx].sum()) for name, idx in spec.block_slices().items()}
    return Comparison(
        parameter=spec.name,
        shape=spec.shape,
        oracles=tuple(oracles),
        tolerance=tol,
        max_abs_error=float(err.max()) if a.size else 0.0,
        max_rel_error=float(rel.max()) if a.size else 0.0,
        failed=int(fail.sum()),
        kinks=int(kink_fail.sum()),
        worst_index=worst,
        worst_block=spec.block_of(worst) if a.size else None,
        worst_values=worst_values,
        blocks_failed=blocks_failed,
        dtype=dtype or "float64",
        compared=int(a.size if where is None else np.count_nonzero(where)),
    )
