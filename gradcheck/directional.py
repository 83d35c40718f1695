"""Directional ("fast") gradient checks: a few random projections per parameter.

Instead of one derivative per element, compare, for K random directions v
supported on one parameter (or one gate block of it), the directional
derivative of the loss with the analytic gradient's projection::

    numeric:   d/de L(theta + e v) at 0  ~  (L(theta + e v) - L(theta - e v)) / 2e
               (or, by the complex step, Im L(theta + i h v) / h)
    analytic:  <g, v> = sum_i g_i v_i

Both signs of the step are evaluated (the central difference); the same
three losses L(theta + e v), L(theta), L(theta - e v) give the one-sided
differences, and a direction whose one-sided differences disagree crossed a
kink (a hard gate's clip) and is not judged, as in the exact check.

The tolerance is the elementwise model of :mod:`gradcheck.tolerance`,
carried over to a projection: if every element erred by its own bound
``atol + rtol |g_i|`` with random signs, the projection would err by about::

    bound = atol ||v||_2 + rtol max(||g * v||_2, |<g, v>|, |numeric|)

(for a single element, v = e_i, this is exactly the elementwise bound).  A
direction fails when |analytic - numeric| exceeds it.  A wrong derivation
errs by far more than the tolerance on many elements, so a Gaussian
projection of the error is unlikely to vanish; Rademacher directions can
cancel two equal errors exactly, so Gaussian is the default.

The check screens: parameters whose directions fail, or whose every
direction crossed a kink, are returned by :meth:`DirectionalResult.fallback`
for the exact, element-by-element check.  Truncated BPTT is differentiated
through its surrogate loss (see :mod:`gradcheck.truncation`), one probe at a
time; full BPTT uses the cell's vectorised ``losses`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck.finite_differences import (COMPLEX_STEP, KINK_RTOL, STEP_SCALE, ComplexStepError,
                                          _has_losses, complex_step_refusal, numeric_loss)
from gradcheck.tolerance import Tolerance, resolve_tolerance

__all__ = ["DIRECTION_KINDS", "DIRECTIONAL_METHODS", "Direction", "DirectionalCheck",
           "DirectionalResult", "random_directions", "projection_bound", "directional_check"]

DIRECTION_KINDS = ("gaussian", "rademacher")
DIRECTIONAL_METHODS = ("central", "complex")


@dataclass
class Direction:
    """One random direction on one support (a parameter, or one gate block of it).

    parameter: the parameter's name.
    block: the gate block the direction lives on, or None for the whole parameter.
    vector: the direction, shape of the parameter, zero off the support.
    step: the step e of the central difference along it.
    """

    parameter: str
    block: str | None
    vector: np.ndarray
    step: float


@dataclass
class DirectionalCheck:
    """The K directions of one support, compared.

    parameter: the parameter's name.
    block: the gate block, or None for the whole parameter.
    analytic: (K,) projections <g, v_k> of the analytic gradient.
    numeric: (K,) directional derivatives of the loss.
    bound: (K,) tolerance of each comparison (see the module docstring).
    kinks: (K,) True where the direction crossed a kink (not judged).
    """

    parameter: str
    block: str | None
    analytic: np.ndarray
    numeric: np.ndarray
    bound: np.ndarray
    kinks: np.ndarray

    @property
    def excess(self) -> np.ndarray:
        """|analytic - numeric| / bound per direction; NaN and Inf rank as inf."""
        with np.errstate(invalid="ignore", over="ignore"):
            ratio = np.abs(self.analytic - self.numeric) / self.bound
        return np.where(np.isfinite(ratio), ratio, np.inf)

    @property
    def failed(self) -> int:
        """Directions, off kinks, that disagree."""
        return int(np.sum((self.excess > 1) & ~self.kinks))

    @property
    def inconclusive(self) -> bool:
        """Every direction crossed a kink: nothing was judged."""
        return bool(self.kinks.all())

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def as_dict(self) -> dict:
        return {"parameter": self.parameter, "block": self.block,
                "analytic": self.analytic.tolist(), "numeric": self.numeric.tolist(),
                "bound": self.bound.tolist(), "kinks": self.kinks.tolist(),
                "failed": self.failed, "inconclusive": self.inconclusive}


@dataclass
class DirectionalResult:
    """Every support's directional comparisons, and what to re-check exactly."""

    checks: list[DirectionalCheck]
    directions: int
    kind: str
    method: str
    seed: int
    probes: int
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.fallback()

    def failing(self) -> list[str]:
        """Parameters with at least one failing direction, in spec order."""
        return list(dict.fromkeys(c.parameter for c in self.checks if not c.passed))

    def inconclusive(self) -> list[str]:
        """Parameters with a support whose every direction crossed a kink."""
        return list(dict.fromkeys(c.parameter for c in self.checks if c.inconclusive))

    def fallback(self) -> list[str]:
        """Parameters the exact, element-by-element check should settle."""
        bad = set(self.failing()) | set(self.inconclusive())
        return [name for name in dict.fromkeys(c.parameter for c in self.checks) if name in bad]

    def summary(self) -> str:
        """One sentence: the verdict, and what fails or was not judged."""
        supports = len(self.checks)
        head = (f"{self.directions} {self.kind} direction{'s' if self.directions > 1 else ''} on "
                f"each of {supports} supports ({self.method}, {self.probes} losses)")
        if self.passed:
            return f"pass: {head} agree"
        parts = []
        for c in self.checks:
            if not c.passed:
                k = int(np.argmax(np.where(c.kinks, -1.0, c.excess)))
                where = c.parameter + (f" (block {c.block})" if c.block else "")
                parts.append(f"{where}: analytic {c.analytic[k]:.6g}, numeric {c.numeric[k]:.6g}")
        if self.inconclusive():
            parts.append("not judged (every direction on a kink): "
                         + ", ".join(self.inconclusive()))
        return f"fail: {head}; " + "; ".join(parts)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "directions": self.directions, "kind": self.kind,
                "method": self.method, "seed": self.seed, "probes": self.probes,
                "failing": self.failing(), "fallback": self.fallback(), "notes": self.notes,
                "checks": [c.as_dict() for c in self.checks]}


def _supports(specs, blocks: bool):
    """``(parameter, block, index)`` of every support, in spec and block order."""
    out = []
    for spec in specs:
        slices = spec.block_slices() if blocks else {}
        if not slices:
            slices = {None: tuple(slice(None) for _ in spec.shape)}
        out += [(spec.name, block, idx) for block, idx in slices.items()]
    return out


def random_directions(specs, params, *, directions: int = 2, kind: str = "gaussian",
                      seed: int = 0, blocks: bool = True, scale: float = STEP_SCALE):
    """K seeded random directions per support, with their central-difference steps.

    specs: the cell's ParamSpecs (names, shapes, gate blocks).
    params: the point of evaluation (sets the steps).
    directions: K, directions per support.
    kind: "gaussian" (N(0, 1) entries) or "rademacher" (+-1 entries).
    seed: seeds the directions.
    blocks: one support per gate block (else one per parameter).
    scale: the relative step c.

    The step moves no element by more than c max(1, max |theta| on the support)::

        e = c max(1, ||theta_S||_inf) / ||v||_inf
    """
    if kind not in DIRECTION_KINDS:
        raise ValueError(f"direction kind {kind!r} is not one of {', '.join(DIRECTION_KINDS)}")
    if (isinstance(directions, bool) or not isinstance(directions, (int, np.integer))
            or directions < 1):
        raise ValueError(f"directions={directions!r} must be a positive integer")
    rng = np.random.default_rng(seed)
    out = []
    for name, block, idx in _supports(specs, blocks):
        theta = np.asarray(params[name], dtype=np.float64)
        support = theta[idx]
        if not support.size:
            continue
        for _ in range(directions):
            v = np.zeros_like(theta)
            if kind == "gaussian":
                v[idx] = rng.standard_normal(support.shape)
            else:
                v[idx] = rng.choice([-1.0, 1.0], size=support.shape)
            step = scale * max(1.0, float(np.abs(support).max())) / float(np.abs(v).max())
            out.append(Direction(name, block, v, step))
    return out


def projection_bound(tol: Tolerance, v, g, analytic, numeric) -> float:
    """The tolerance of one projection (see the module docstring).

    tol: the parameter's elementwise tolerance.
    v: the direction.
    g: the analytic gradient of the parameter.
    analytic: <g, v>.
    numeric: the numeric directional derivative.
    """
    # atol ||v||_2 + rtol max(||g * v||_2, |<g, v>|, |numeric|)
    spread = float(np.linalg.norm((np.asarray(g, dtype=np.float64) * v).ravel()))
    return tol.atol * float(np.linalg.norm(v.ravel())) + tol.rtol * max(
        spread, abs(analytic), abs(numeric))


def _probe_losses(cell, params, batch, name, moved):
    """Losses at ``params`` with ``params[name]`` replaced by each of ``moved`` (P, *shape)."""
    if _has_losses(cell):
        stack = {k: np.broadcast_to(v, (len(moved),) + v.shape) for k, v in params.items()}
        stack[name] = moved
        return np.asarray(cell.losses(stack, batch))
    loss = numeric_loss(cell, params, batch)
    return np.array([loss({**params, name: m}) for m in moved])


def _numeric_central(cell, params, batch, dirs, f0):
    """Central directional derivatives and kink flags, one vectorised pass per parameter."""
    numeric, kinks = np.empty(len(dirs)), np.zeros(len(dirs), dtype=bool)
    for name in dict.fromkeys(d.parameter for d in dirs):
        which = [j for j, d in enumerate(dirs) if d.parameter == name]
        theta = params[name]
        moved = np.stack([theta + sign * dirs[j].step * dirs[j].vector
                          for j in which for sign in (1.0, -1.0)])
        losses = _probe_losses(cell, params, batch, name, moved)
        e = np.array([dirs[j].step for j in which])
        f_plus, f_minus = losses[0::2], losses[1::2]
        # (L(theta + e v) - L(theta - e v)) / 2e
        numeric[which] = (f_plus - f_minus) / (2.0 * e)
        # one-sided: (L(theta + e v) - L(theta)) / e against (L(theta) - L(theta - e v)) / e
        fwd, bwd = (f_plus - f0) / e, (f0 - f_minus) / e
        kinks[which] = np.abs(fwd - bwd) > KINK_RTOL * np.maximum(np.abs(fwd), np.abs(bwd)) + \
            1e3 * STEP_SCALE ** 2
    return numeric, kinks


def _numeric_complex(cell, params, batch, dirs, step=COMPLEX_STEP):
    """Directional derivatives by the complex step, one vectorised pass per parameter."""
    refusal = complex_step_refusal(cell)
    if refusal:
        raise ComplexStepError(refusal)
    numeric = np.empty(len(dirs))
    for name in dict.fromkeys(d.parameter for d in dirs):
        which = [j for j, d in enumerate(dirs) if d.parameter == name]
        moved = np.stack([params[name] + 1j * step * dirs[j].vector for j in which])
        losses = _probe_losses(cell, params, batch, name, moved)
        if not np.iscomplexobj(losses):
            raise ComplexStepError("the loss returned real numbers for complex parameters: "
                                   "it is not complex-safe")
        # d/de L(theta + e v) = Im L(theta + i h v) / h
        numeric[which] = np.imag(losses) / step
    return numeric, np.zeros(len(dirs), dtype=bool)


def directional_check(cell, params, batch, analytic, *, tolerances=None, directions: int = 2,
                      kind: str = "gaussian", seed: int = 0, blocks: bool = True,
                      method: str = "central", scale: float = STEP_SCALE) -> DirectionalResult:
    """Screen the analytic gradient with K random directions per parameter (or gate block).

    cell: the cell (``param_specs``, ``loss``; ``losses`` makes it one pass per parameter).
    params: the point of evaluation; not modified.
    batch: the batch.
    analytic: the analytic gradient, ``{name: array}``.
    tolerances: ``{name: Tolerance}``; the float64 defaults when None.
    directions: K, directions per support.
    kind: "gaussian" or "rademacher".
    seed: seeds the directions.
    blocks: one support per gate block (else one per parameter).
    method: "central" (central differences along v) or "complex" (complex step).
    scale: the relative step c of the central differences.

    Returns a DirectionalResult; its ``fallback()`` names the parameters for the
    exact check.
    """
    if method not in DIRECTIONAL_METHODS:
        raise ValueError(f"directional method {method!r} is not one of "
                         f"{', '.join(DIRECTIONAL_METHODS)}")
    specs = cell.param_specs()
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if tolerances is None:
        tolerances = {s.name: resolve_tolerance(np.float64) for s in specs}
    dirs = random_directions(specs, params, directions=directions, kind=kind, seed=seed,
                             blocks=blocks, scale=scale)
    if method == "complex":
        numeric, kinks = _numeric_complex(cell, params, batch, dirs)
        probes = len(dirs)
    else:
        f0 = float(numeric_loss(cell, params, batch)(params))
        numeric, kinks = _numeric_central(cell, params, batch, dirs, f0)
        probes = 2 * len(dirs) + 1
    checks = []
    for name, block, _ in _supports(specs, blocks):
        which = [j for j, d in enumerate(dirs) if (d.parameter, d.block) == (name, block)]
        if not which:
            continue
        g = np.asarray(analytic[name], dtype=np.float64)
        a = np.array([float(np.sum(g * dirs[j].vector)) for j in which])
        bound = np.array([projection_bound(tolerances[name], dirs[j].vector, g, a[i], numeric[j])
                          for i, j in enumerate(which)])
        checks.append(DirectionalCheck(name, block, a, numeric[which], bound, kinks[which]))
    return DirectionalResult(checks=checks, directions=directions, kind=kind, method=method,
                             seed=seed, probes=probes)
