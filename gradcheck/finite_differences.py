"""Numeric gradients by central finite differences, in float64.

For each element theta_i, with a per-element step::

    h_i = c * max(1, |theta_i|),   c = eps ** (1/3) ~ 6.06e-6   (float64 eps)

    dL/dtheta_i ~ (L(theta + h_i e_i) - L(theta - h_i e_i)) / (2 h_i)

The error is O(h^2 L''') + O(eps |L| / h), balanced near c = eps^(1/3).  The
step actually used is ``(theta_i + h_i) - theta_i`` so that it is exactly
representable.

The same three evaluations give the two one-sided differences::

    forward  = (L(theta + h e_i) - L(theta)) / h
    backward = (L(theta) - L(theta - h e_i)) / h

For a smooth L they differ by about L'' h; when they differ by much more, the
perturbation crossed a kink (hard sigmoid, clipping) and the central
difference is not a derivative: the element is flagged as a kink.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["STEP_SCALE", "KINK_RTOL", "NumericGradient", "element_steps", "central_differences",
           "step_size_curve"]

STEP_SCALE = float(np.finfo(np.float64).eps ** (1.0 / 3.0))
# one-sided differences disagreeing by more than this fraction flag a kink
KINK_RTOL = 1e-3


@dataclass
class NumericGradient:
    """Central-difference gradient of one parameter, with kink flags.

    value: the central differences, shape of the parameter.
    kinks: True where the one-sided differences disagree (a non-differentiable point).
    """

    value: np.ndarray
    kinks: np.ndarray


def element_steps(theta: np.ndarray, scale: float = STEP_SCALE) -> np.ndarray:
    """h_i = scale * max(1, |theta_i|), rounded so theta_i + h_i - theta_i == h_i."""
    theta = np.asarray(theta, dtype=np.float64)
    h = scale * np.maximum(1.0, np.abs(theta))
    return (theta + h) - theta


def central_differences(loss, params, names=None, *, scale: float = STEP_SCALE,
                        elements=None, out=None):
    """``{name: NumericGradient}`` of the scalar ``loss(params)`` for each named parameter.

    loss: callable taking a dict of float64 arrays and returning a float.
    params: the point of evaluation; not modified (perturbed copies are used).
    names: which parameters to differentiate; all by default.
    scale: the relative step c.
    elements: ``{name: boolean mask or None}``; only masked elements are differentiated,
        the others are NaN (None: every element).
    out: a dict filled as each parameter is finished (what an interrupted run keeps).
    """
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    f0 = float(loss(work))
    out = {} if out is None else out
    for name in (names if names is not None else list(work)):
        theta = work[name]
        flat = theta.reshape(-1)                    # a view: perturb in place
        steps = element_steps(flat, scale)
        value = np.full(flat.size, np.nan)
        kinks = np.zeros(flat.size, dtype=bool)
        chosen = (elements or {}).get(name)
        indices = range(flat.size) if chosen is None else np.flatnonzero(chosen)
        for i in indices:
            old, h = flat[i], steps[i]
            flat[i] = old + h
            f_plus = float(loss(work))
            flat[i] = old - h
            f_minus = float(loss(work))
            flat[i] = old
            # (L(theta + h) - L(theta - h)) / 2h
            value[i] = (f_plus - f_minus) / (2.0 * h)
            fwd, bwd = (f_plus - f0) / h, (f0 - f_minus) / h
            kinks[i] = abs(fwd - bwd) > KINK_RTOL * max(abs(fwd), abs(bwd)) + 1e3 * STEP_SCALE ** 2
        out[name] = NumericGradient(value.reshape(theta.shape), kinks.reshape(theta.shape))
    return out


def step_size_curve(loss, params, name, index, reference, *, scales=None) -> dict:
    """Error of the central difference of one element against ``reference``, by step size.

    The curve is V-shaped: truncation error O(h^2) on the right, rounding error
    O(eps / h) on the left, its minimum near h = eps^(1/3).  A curve whose floor
    sits far above rounding says the reference itself is off.

    Returns ``{"parameter", "index", "steps", "errors", "reference", "step_used"}``.
    """
    scales = np.logspace(-1, -13, 25) if scales is None else np.asarray(scales)
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    theta = work[name]
    old = float(theta[index])
    steps, errors = [], []
    for c in scales:
        h = (old + c * max(1.0, abs(old))) - old
        theta[index] = old + h
        f_plus = float(loss(work))
        theta[index] = old - h
        f_minus = float(loss(work))
        theta[index] = old
        steps.append(float(h))
        errors.append(abs((f_plus - f_minus) / (2.0 * h) - float(reference)))
    return {"parameter": name, "index": [int(i) for i in index], "steps": steps,
            "errors": errors, "reference": float(reference),
            "step_used": float(element_steps(np.array([old]))[0])}
