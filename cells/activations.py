"""Gate activations and their derivatives, each derivative under its function.

Derivatives are taken with respect to the pre-activation ``a``.  Using the
gate's output instead is a classic derivation bug (see the seeds): for the hard
sigmoid it makes the slope 0.2 everywhere.
"""

from __future__ import annotations

import numpy as np

# a class axis this short is reduced class by class in log_normaliser
SHORT_AXIS = 8

__all__ = ["GATES", "LOOP_GATES", "sigmoid", "sigmoid_in_loop", "sigmoid_grad", "hard_sigmoid",
           "hard_sigmoid_grad", "tanh_grad_from_output", "log_softmax", "log_normaliser"]


def sigmoid(a, out=None):
    """sigma(a) = 1 / (1 + exp(-a)); complex-safe.  ``out``: where to write it (may be ``a``).

    Real a: four passes over the array (negate, exp, add one, reciprocal).
    exp(-a) overflows to inf for a < -709 (float64), and 1 / (1 + inf) = 0 is
    the right limit, so the overflow warning is silenced rather than avoided.

    Complex a (the complex step): with e = exp(-|a|), the branch following Re a::

        sigma(a) = 1 / (1 + e)   where Re a >= 0      (e = exp(-a))
        sigma(a) = e / (1 + e)   where Re a <  0      (e = exp(a))

    which keeps the imaginary part and never overflows.
    """
    a = np.asarray(a)
    if np.iscomplexobj(a):
        pos = a.real >= 0
        e = np.exp(np.where(pos, -a, a))
        return np.divide(np.where(pos, 1.0, e), 1.0 + e, out=out)
    if a.ndim == 0:
        return sigmoid(a.reshape(1)).reshape(())
    with np.errstate(over="ignore"):
        return _logistic(a, out)


def sigmoid_in_loop(a, out=None):
    """``sigmoid`` of an array, for the cells' time loops, which silence exp's overflow
    once around the loop (``np.errstate(over="ignore")``) instead of once a call.

    Entering an errstate costs about 1.3 us, as much as the four passes over a
    (8, 64) gate array.  The numbers are ``sigmoid``'s; called outside such a
    loop, a < -709 warns of the overflow (the value is still the right 0).
    """
    if a.dtype.kind == "c":
        return sigmoid(a, out=out)
    return _logistic(a, out)


def _logistic(a, out):
    """1 / (1 + exp(-a)) of a real array in four passes, written into ``out``."""
    out = np.negative(a, out=out)
    np.exp(out, out=out)                                        # exp(-a), inf far left
    out += 1.0
    return np.reciprocal(out, out=out)


def sigmoid_grad(a, g):
    """d sigma / d a = sigma(a) (1 - sigma(a)); ``g`` is sigma(a)."""
    return g * (1.0 - g)


def hard_sigmoid(a, out=None):
    """hard_sigma(a) = clip(0.2 a + 0.5, 0, 1).  ``out``: where to write it (may be ``a``)."""
    if out is None:
        return np.clip(0.2 * a + 0.5, 0.0, 1.0)
    np.multiply(a, 0.2, out=out)
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def hard_sigmoid_grad(a, g):
    """d hard_sigma / d a = 0.2 inside -2.5 < a < 2.5, else 0 (kinks at +-2.5 take 0)."""
    return np.where((a > -2.5) & (a < 2.5), 0.2, 0.0)


def tanh_grad_from_output(n, out=None):
    """d tanh(a) / d a = 1 - tanh(a)^2, from the output ``n = tanh(a)``; ``out``: where to
    write it."""
    if out is None:
        return 1.0 - n * n
    np.multiply(n, n, out=out)
    return np.subtract(1.0, out, out=out)


def log_normaliser(logits):
    """``(shift, log_total)`` of the last axis, (...,) each, with log sum_k exp(l_k) =
    shift + log_total and shift the max: the log softmax is (l - shift) - log_total,
    kept apart so that large logits lose no digits to the sum.

    For complex logits (the complex step) the shift is the max of the real
    part: any shift constant along the axis gives the same function, so it
    need not be differentiable.  A short real axis (at most ``SHORT_AXIS``
    classes) is reduced class by class, each class a strided column: NumPy's
    reductions and broadcasts over a last axis of 2 cost more per row than the
    arithmetic (half of a vectorised pass's readout); the max is the same, the
    sum adds the classes in order.
    """
    K = logits.shape[-1]
    if np.iscomplexobj(logits) or not 1 <= K <= SHORT_AXIS:
        shift = np.real(logits).max(axis=-1)
        return shift, np.log(np.exp(logits - shift[..., None]).sum(axis=-1))
    shift = logits[..., 0].copy()
    for k in range(1, K):
        np.maximum(shift, logits[..., k], out=shift)
    total = np.exp(logits[..., 0] - shift)                      # sum_k exp(l_k - shift)
    for k in range(1, K):
        total += np.exp(logits[..., k] - shift)
    return shift, np.log(total, out=total)


def log_softmax(logits):
    """log softmax over the last axis: (l - shift) - log_total (see ``log_normaliser``)."""
    shift, log_total = log_normaliser(logits)
    return (logits - shift[..., None]) - log_total[..., None]


# name -> (function, derivative(a, g))
GATES = {
    "sigmoid": (sigmoid, sigmoid_grad),
    "hard": (hard_sigmoid, hard_sigmoid_grad),
}
# name -> the function as a cell's step calls it, inside a loop that silences overflow
LOOP_GATES = {"sigmoid": sigmoid_in_loop, "hard": hard_sigmoid}
