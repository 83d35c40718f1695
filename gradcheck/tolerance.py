"""The tolerance model.

Two values a and b agree when both are finite and::

    |a - b| <= atol + rtol * max(|a|, |b|)

NaN and Inf never agree with anything, themselves included.  Defaults come from
a per-dtype table (the dtype of the parameter being checked) and can be
overridden by a scalar (all dtypes) or by a dict ``{dtype: value}``: atol >= 0
and 0 <= rtol < 1 (atol = 0 is a purely relative test, rtol = 0 a purely
absolute one; with rtol >= 1 a zero gradient would agree with any other).

A zero gradient agrees with b wherever |b| <= atol / (1 - rtol)
(``zero_bound``): a parameter whose gradients all lie within that bound is
one the comparison cannot fail on (see gradcheck.check).

Why these float64 defaults: central differences with step eps^(1/3) carry an
error near eps^(2/3) |L| ~ 4e-11 |L| for a loss of size |L|; analytic and
autodiff gradients agree to rounding (~1e-13).  atol = 1e-6 leaves a margin of
about 1000x for losses up to |L| ~ 20 while a wrong derivation typically errs
by 1e-2 or more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tolerance", "DEFAULT_ATOL", "DEFAULT_RTOL", "DETERMINISM_TOLERANCE",
           "resolve_tolerance", "agree", "same_loss"]

DEFAULT_ATOL = {
    np.dtype(np.float64): 1e-6,
    np.dtype(np.float32): 1e-3,
    np.dtype(np.float16): 1e-2,
}
DEFAULT_RTOL = {
    np.dtype(np.float64): 1e-5,
    np.dtype(np.float32): 1e-3,
    np.dtype(np.float16): 1e-2,
}


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance of one comparison."""

    atol: float
    rtol: float

    def as_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol}

    @property
    def zero_bound(self) -> float:
        """The largest |b| that a zero agrees with: |0 - b| <= atol + rtol |b|."""
        return self.atol / (1.0 - self.rtol)


def _pick(table, override, dtype, what):
    if override is None:
        value = table[dtype]
    elif isinstance(override, dict):
        merged = {np.dtype(k): v for k, v in override.items()}
        value = merged.get(dtype, table[dtype])
    else:
        value = override
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{what}={value!r} must be a finite number, 0 or more")
    if what == "rtol" and value >= 1:
        raise ValueError(f"rtol={value!r} must be less than 1: with rtol >= 1 a zero gradient "
                         "agrees with every other, so the check could not fail")
    return value


# the same function at the same inputs must give the same loss, whichever way it is
# computed (loss(), the step interface); this only forgives reassociation
DETERMINISM_TOLERANCE = Tolerance(atol=0.0, rtol=1e-13)


def resolve_tolerance(dtype=np.float64, atol=None, rtol=None) -> Tolerance:
    """Tolerance for ``dtype``: the table's defaults, overridden by a scalar or dict."""
    dtype = np.dtype(dtype)
    if dtype not in DEFAULT_ATOL:
        raise ValueError(f"no tolerance defaults for dtype {dtype}: use float16, float32 or float64")
    return Tolerance(_pick(DEFAULT_ATOL, atol, dtype, "atol"),
                     _pick(DEFAULT_RTOL, rtol, dtype, "rtol"))


def agree(a, b, tol: Tolerance) -> np.ndarray:
    """Elementwise: finite and |a - b| <= atol + rtol * max(|a|, |b|)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore", over="ignore"):
        bound = tol.atol + tol.rtol * np.maximum(np.abs(a), np.abs(b))
        return finite & (np.abs(a - b) <= bound)


def same_loss(a, b) -> bool:
    """Whether two evaluations of one loss at one point agree: equal (infinities too),
    or within DETERMINISM_TOLERANCE (loss() run again, or the step interface's loss)."""
    return bool(a == b or agree(a, b, DETERMINISM_TOLERANCE))
