"""Sparse-aware checks of parameters the forward pass reads by row: embeddings.

An embedding E (V, D) reaches the loss only through ``E[ids]``, the rows that
the batch's token ids name (the *used* rows).  A parameter declares this with
``ParamSpec(..., rows_indexed_by="x")``, the batch array holding the ids.
Instead of differentiating all V D elements, the check then

- differentiates every element of the used rows numerically;
- requires the analytic gradient, and the autodiff one, to be exactly zero on
  every unused row (free: a lookup's gradient is a scatter-add into zeros);
- differentiates a seeded random sample of the unused rows numerically (the
  loss must not depend on them: the numeric gradient must be ~0);
- moves all the unused rows at once along one seeded random direction v; the
  directional derivative must be ~0 too, within the projection's tolerance
  ``atol ||v||_2`` (:func:`gradcheck.directional.projection_bound`).  This costs
  two loss evaluations, whatever V.

The numeric work is that of the used rows plus the sample, not of V rows.
What this cannot see: a forward pass that reads an unused row, say a
hard-coded ``E[0]``, fails the sample only when the sample holds that row;
the direction catches it unless its effect lies within the tolerance of the
projection (which grows with the square root of the number of unused
elements).  ``embedding_sample=None`` differentiates every row (the
direction is then left out: it adds nothing) and keeps the exact-zero rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck.compare import _json_float
from gradcheck.directional import projection_bound
from gradcheck.finite_differences import STEP_SCALE
from gradcheck.tolerance import Tolerance, agree

__all__ = ["EMBEDDING_SAMPLE", "ROW_SAMPLE_STREAM", "RowViolation", "UnusedRowsDirection",
           "SparseRowCheck", "validate_embedding_sample", "row_ids", "sample_mask",
           "plan_sparse_rows", "probe_unused_rows"]

# unused rows differentiated numerically by default
EMBEDDING_SAMPLE = 8
# the row sample and the direction draw from default_rng([seed, ROW_SAMPLE_STREAM]),
# apart from the element sample of max_elements, which they leave unchanged
ROW_SAMPLE_STREAM = 1


def validate_embedding_sample(value) -> None:
    """ValueError unless ``value`` is a non-negative integer or None.

    value: the ``embedding_sample`` argument of ``check_gradients``.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"embedding_sample={value!r} must be a non-negative integer (unused "
                         "embedding rows to differentiate numerically) or None (every row)")


def row_ids(spec, batch) -> np.ndarray:
    """The integer row ids the batch holds for ``spec``; ValueError naming what is wrong.

    spec: a ParamSpec with ``rows_indexed_by`` set.
    batch: the batch (an object with that attribute, or a dict with that key).
    """
    name = spec.rows_indexed_by
    ids = batch.get(name) if isinstance(batch, dict) else getattr(batch, name, None)
    if ids is None:
        raise ValueError(f"the rows of {spec.name} are indexed by batch.{name}, which the "
                         "batch does not have")
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"batch.{name} indexes the rows of {spec.name} but holds {ids.dtype}, "
                         "not integer ids")
    rows = spec.shape[0]
    outside = ids[(ids < 0) | (ids >= rows)]
    if outside.size:
        raise ValueError(f"batch.{name} holds id {int(outside[0])}, outside the rows of "
                         f"{spec.name} [0, {rows})")
    return ids


def sample_mask(candidates: np.ndarray, count: int | None, rng) -> np.ndarray:
    """``candidates`` (a boolean mask) with at most ``count`` True entries kept, at random.

    candidates: the entries that may be chosen.
    count: how many to keep; None or at least their number keeps them all.
    rng: the numpy Generator that draws them.
    """
    flat = np.flatnonzero(candidates)
    if count is None or flat.size <= count:
        return np.array(candidates, dtype=bool)
    chosen = np.zeros(candidates.size, dtype=bool)
    chosen[rng.choice(flat, size=count, replace=False)] = True
    return chosen.reshape(candidates.shape)


@dataclass
class RowViolation:
    """Unused rows of one parameter on which one oracle's gradient is not zero.

    parameter: the parameter's name.
    oracle: the oracle whose gradient is not zero there.
    rows: every offending row, ascending.
    index: the offending element of largest magnitude.
    value: the oracle's value there.
    reference: for the numeric oracle, ``(oracle, value)`` of the analytic or autodiff
        gradient there, when one was computed; None otherwise.
    """

    parameter: str
    oracle: str
    rows: np.ndarray
    index: tuple[int, ...]
    value: float
    reference: tuple[str, float] | None = None

    def message(self) -> str:
        where = f"{self.parameter}[{', '.join(str(i) for i in self.index)}]"
        head = f"{self.parameter} row {self.index[0]} is not used by the batch"
        more = len(self.rows) - 1
        if self.oracle != "numeric":
            tail = (f"; {more} more unused row{'s' if more > 1 else ''} of {self.parameter} "
                    f"{'have' if more > 1 else 'has'} a non-zero {self.oracle} gradient"
                    if more else "")
            return (f"{head} but its {self.oracle} gradient is {self.value:.6g} at {where} "
                    f"(exactly 0 expected){tail}")
        other = "" if self.reference is None else \
            f", {self.reference[0]} {self.reference[1]:.6g}"
        return (f"{head} but the loss depends on it: numeric gradient {self.value:.6g} at "
                f"{where}{other} (does the forward pass read a row the batch does not name?)")

    def as_dict(self) -> dict:
        # the first 100 offending rows; row_count counts them all
        return {"parameter": self.parameter, "oracle": self.oracle,
                "rows": [int(r) for r in self.rows[:100]], "row_count": int(len(self.rows)),
                "index": [int(i) for i in self.index], "value": _json_float(self.value),
                "expected": 0.0,
                "reference": None if self.reference is None else {
                    "oracle": self.reference[0], "value": _json_float(self.reference[1])},
                "message": self.message()}


@dataclass
class UnusedRowsDirection:
    """The loss along one random direction over every unused row of a parameter.

    rows: how many unused rows the direction moves.
    numeric: the central-difference directional derivative (0 expected).
    bound: its tolerance, ``projection_bound`` with a zero analytic projection.
    step: the step along the direction.
    """

    rows: int
    numeric: float
    bound: float
    step: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.numeric) and abs(self.numeric) <= self.bound)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "numeric": _json_float(self.numeric),
                "bound": _json_float(self.bound), "step": self.step, "passed": self.passed}


@dataclass
class SparseRowCheck:
    """What the check did, and found, on one parameter read by row.

    parameter: the parameter's name.
    indexed_by: the batch array of its row ids.
    rows: its number of rows.
    used: the rows the batch uses, ascending.
    sampled: the unused rows differentiated numerically, ascending.
    numeric_elements: elements the numeric oracle differentiated (0: none).
    capped: whether ``max_elements`` cut the elements of the used and sampled rows.
    zero_checked: the oracles whose gradient was required to be 0 on every unused row.
    direction: the loss along a random direction over the unused rows, if probed.
    violations: unused rows on which a gradient is not zero.
    """

    parameter: str
    indexed_by: str
    rows: int
    used: np.ndarray
    sampled: np.ndarray
    numeric_elements: int = 0
    capped: bool = False
    zero_checked: tuple[str, ...] = ()
    direction: UnusedRowsDirection | None = None
    violations: list[RowViolation] = field(default_factory=list)

    @property
    def unused(self) -> int:
        return self.rows - len(self.used)

    @property
    def passed(self) -> bool:
        return not self.violations and (self.direction is None or self.direction.passed)

    def unused_rows(self) -> np.ndarray:
        """(rows,) True on the rows the batch does not use."""
        mask = np.ones(self.rows, dtype=bool)
        mask[self.used] = False
        return mask

    def element_mask(self, shape) -> np.ndarray | None:
        """The elements to differentiate numerically, shape ``shape``; None for all of them.

        shape: the parameter's shape (rows first).
        """
        rows = ~self.unused_rows()
        rows[self.sampled] = True
        if rows.all():
            return None
        return np.broadcast_to(rows.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()

    def judge(self, grads, numeric, tolerance: Tolerance, elements=None) -> None:
        """Record the violations on the unused rows.

        grads: ``{oracle: {name: array}}``, the gradients the oracles gave.
        numeric: this parameter's NumericGradient, or None when not differentiated.
        tolerance: this parameter's tolerance (for the numeric sample).
        elements: the elements the numeric oracle differentiated (None: all of them).
        """
        unused = self.unused_rows()
        self.zero_checked = tuple(o for o in ("analytic", "autodiff")
                                  if self.parameter in grads.get(o, {}))
        for oracle in self.zero_checked:
            g = np.asarray(grads[oracle][self.parameter], dtype=np.float64)
            bad = unused[:, None] & (g != 0).reshape(self.rows, -1)
            if bad.any():
                self.violations.append(self._violation(oracle, g, bad))
        if numeric is None or not self.sampled.size:
            return
        sampled = np.zeros(self.rows, dtype=bool)
        sampled[self.sampled] = True
        value = np.asarray(numeric.value, dtype=np.float64)
        done = np.ones(value.shape, dtype=bool) if elements is None else elements
        bad = (sampled[:, None] & ~agree(value, 0.0, tolerance).reshape(self.rows, -1)
               & (done & ~np.asarray(numeric.kinks)).reshape(self.rows, -1))
        if bad.any():
            violation = self._violation("numeric", value, bad)
            for other in self.zero_checked[:1]:
                violation.reference = (other, float(grads[other][self.parameter][violation.index]))
            self.violations.append(violation)

    def _violation(self, oracle, values, bad) -> RowViolation:
        """The violation of ``oracle``: ``values`` (the parameter's shape) where ``bad``."""
        values = np.asarray(values, dtype=np.float64)
        bad = np.reshape(bad, values.shape)
        magnitude = np.where(bad, np.nan_to_num(np.abs(values), nan=np.inf), -1.0)
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(magnitude)), values.shape))
        rows = np.flatnonzero(bad.reshape(self.rows, -1).any(axis=1))
        return RowViolation(self.parameter, oracle, rows, index, float(values[index]))

    def messages(self) -> list[str]:
        """One sentence per violation, and one for a direction along which the loss moves."""
        out = [v.message() for v in self.violations]
        d = self.direction
        if d is not None and not d.passed:
            out.append(f"the loss depends on rows of {self.parameter} the batch does not use: "
                       f"along a random direction over {_all_unused(d.rows)} its derivative "
                       f"is {d.numeric:.6g}, not 0 (tolerance {d.bound:.3g}; does the forward "
                       "pass read a row the batch does not name?)")
        return out

    def note(self) -> str:
        """What was done, in one sentence."""
        p, unused = self.parameter, self.unused
        parts = [f"{p}: {len(self.used)} of {self.rows} rows used by the batch"]
        if not self.numeric_elements:
            parts[0] += ", none differentiated numerically"
        elif self.capped:
            parts[0] += (f"; {self.numeric_elements} elements of them and of {len(self.sampled)} "
                         f"sampled unused rows differentiated numerically (max_elements)")
        else:
            parts[0] += ", checked exactly"
            if unused and len(self.sampled) == unused:
                parts.append(f"{_all_unused(unused)} differentiated numerically")
            elif unused:
                rows = "rows" if unused > 1 else "row"
                parts.append(f"{len(self.sampled)} of {unused} unused {rows} sampled numerically "
                             "(seeded)")
        if self.direction is not None and self.direction.passed:
            parts.append(f"the loss is flat along a random direction over {_all_unused(unused)}")
        clean = [o for o in self.zero_checked if not any(v.oracle == o for v in self.violations)]
        if clean and unused:
            parts.append(f"{' and '.join(clean)} gradient{'s' if len(clean) > 1 else ''} "
                         f"exactly zero on {_all_unused(unused)}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"parameter": self.parameter, "indexed_by": self.indexed_by, "rows": self.rows,
                "used_rows": int(len(self.used)), "unused_rows": self.unused,
                "sampled_unused_rows": [int(r) for r in self.sampled],
                "numeric_elements": self.numeric_elements, "capped": self.capped,
                "zero_checked": list(self.zero_checked),
                "direction": None if self.direction is None else self.direction.as_dict(),
                "violations": [v.as_dict() for v in self.violations],
                "passed": self.passed, "note": self.note()}


def _all_unused(count: int) -> str:
    """"all N unused rows", or "the one unused row"."""
    return "the one unused row" if count == 1 else f"all {count} unused rows"


def plan_sparse_rows(spec, batch, sample: int | None, rng) -> SparseRowCheck:
    """The used rows of ``spec`` and a seeded sample of its unused ones.

    spec: a ParamSpec with ``rows_indexed_by`` set.
    batch: the batch holding the row ids.
    sample: how many unused rows to differentiate numerically; None: all of them.
    rng: the numpy Generator that draws them.
    """
    used = np.unique(row_ids(spec, batch))
    check = SparseRowCheck(spec.name, spec.rows_indexed_by, spec.shape[0],
                           used.astype(np.int64), np.zeros(0, dtype=np.int64))
    check.sampled = np.flatnonzero(sample_mask(check.unused_rows(), sample, rng))
    return check


def probe_unused_rows(check: SparseRowCheck, loss, params, tolerance: Tolerance,
                      rng, *, differentiated: bool = True) -> UnusedRowsDirection | None:
    """The loss's derivative along one random direction over every unused row.

    check: the parameter's SparseRowCheck.
    loss: the scalar loss the numeric oracle differentiates, ``loss(params)``.
    params: the point of evaluation, float64; not modified.
    tolerance: the parameter's tolerance.
    rng: the numpy Generator that draws the direction.
    differentiated: whether the numeric oracle differentiated the sampled unused rows
        one by one (not in fast mode when the parameter passed the directional screen,
        nor when max_elements cut its elements).

    Returns None when there is no unused row, or every one is differentiated one by
    one anyway.
    The step is that of the directional check: no element moves by more than
    c max(1, max |theta| on the rows).
    """
    unused = check.unused_rows()
    if not unused.any() or (differentiated and len(check.sampled) == int(unused.sum())):
        return None
    theta = np.asarray(params[check.parameter], dtype=np.float64)
    v = np.zeros_like(theta)
    v[unused] = rng.standard_normal(v[unused].shape)
    step = STEP_SCALE * max(1.0, float(np.abs(theta[unused]).max())) / float(np.abs(v).max())
    f_plus = float(loss({**params, check.parameter: theta + step * v}))
    f_minus = float(loss({**params, check.parameter: theta - step * v}))
    # (L(theta + e v) - L(theta - e v)) / 2e, against an analytic projection of exactly 0
    numeric = (f_plus - f_minus) / (2.0 * step)
    bound = projection_bound(tolerance, v, np.zeros_like(theta), 0.0, numeric)
    return UnusedRowsDirection(int(unused.sum()), numeric, bound, step)
