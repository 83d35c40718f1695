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

Three ways to run it, with the same numbers:

``central_differences(loss, params)``
    one element at a time, two calls of ``loss`` each: any loss.

``batched_central_differences(cell, params, batch)``
    many +h / -h perturbations in one vectorised forward pass, along a
    leading probe axis (``cell.losses``, see ``cells.stacked.StackedCell``);
    the per-probe Python overhead disappears and every loss is computed by
    the same operations on the same numbers as ``cell.loss``.  The passes
    run ``probe_workers()`` at a time (``gradcheck.probe_pool``): in forked
    processes when the cell says its passes may, else on threads, the BLAS
    pool held to one thread meanwhile; each pass returns its own results, so
    the numbers do not depend on the worker count.  Truncated
    BPTT's surrogate losses run the same way through the step interface when
    the cell's steps take a probe axis (``truncation.surrogate_loss``'s
    ``losses``).  Other cells without ``losses`` take the one-at-a-time path.

``complex_step(loss, params)``, ``batched_complex_step(cell, params, batch)``
    for a forward pass built from analytic functions, the complex step::

        dL/dtheta_i = Im L(theta + i h e_i) / h,   h = 1e-20

    has no subtraction, so no cancellation: it is exact to rounding.  A cell
    opts in with ``supports_complex_step`` (the reference cells do for
    sigmoid gates, not for the hard sigmoid, whose clip is not analytic).

``numeric_gradient(cell, params, batch, method=...)`` picks the loss (the
truncation surrogate when the cell truncates its BPTT) and the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck import progress
from gradcheck.perturbed_rows import PerturbedRows
from gradcheck.probe_pool import forks_for, probe_pool, probe_workers

__all__ = ["STEP_SCALE", "KINK_RTOL", "COMPLEX_STEP", "NUMERIC_METHODS", "ComplexStepError",
           "NumericGradient", "element_steps", "central_differences", "batched_central_differences",
           "complex_step", "batched_complex_step", "complex_step_refusal",
           "complex_step_disagreement", "numeric_gradient", "unflag_curvature", "is_curve",
           "curve_central",
           "numeric_loss", "probe_chunk", "probe_workers", "step_size_curve", "vectorised_losses"]

STEP_SCALE = float(np.finfo(np.float64).eps ** (1.0 / 3.0))
# one-sided differences disagreeing by more than this fraction flag a kink
KINK_RTOL = 1e-3
# ... and by more than this times |L| / h: eight times their gap from rounding alone
ROUNDING_GAP = 16 * float(np.finfo(np.float64).eps)
# the complex step: far below rounding of theta, so theta + i h is exact
COMPLEX_STEP = 1e-20
# the numeric oracle's methods: one element at a time, vectorised, complex step
NUMERIC_METHODS = ("central", "batched", "complex")
# bytes of one per-step gate array across the probes of a vectorised pass:
# small enough to stay in cache, large enough to amortise the Python per step;
# with several worker threads, larger, so that they seldom wait for the GIL
# (forked processes have a GIL each: the single-thread size)
PROBE_BYTES = 1 << 18
PROBE_BYTES_THREADED = 1 << 21
# bytes of the perturbed copies of one parameter in a vectorised pass: each probe
# holds a whole copy of the parameter it moves (an embedding can be megabytes)
STACK_BYTES = 1 << 25


class ComplexStepError(ValueError):
    """The complex step cannot differentiate this cell or loss (the reason is the message)."""


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
        for i in _selected(elements, name, flat.size):
            old, h = flat[i], steps[i]
            flat[i] = old + h
            f_plus = float(loss(work))
            flat[i] = old - h
            f_minus = float(loss(work))
            flat[i] = old
            # (L(theta + h) - L(theta - h)) / 2h
            value[i] = (f_plus - f_minus) / (2.0 * h)
            kinks[i] = bool(_kinks(np.float64(f_plus), f_minus, f0, h))
            progress.advance(1)
        out[name] = NumericGradient(value.reshape(theta.shape), kinks.reshape(theta.shape))
    return out


def step_size_curve(loss, params, name, index, reference, *, scales=None, cell=None,
                    losses=None) -> dict:
    """Error of the central difference of one element against ``reference``, by step size.

    The curve is V-shaped: truncation error O(h^2) on the right, rounding error
    O(eps / h) on the left, its minimum near h = eps^(1/3).  A curve whose floor
    sits far above rounding says the reference itself is off.

    losses: ``losses(stack)`` -> (P,), the vectorised ``loss`` of a probe stack
        ``{name: (P, *shape)}`` (as ``cell.losses``), giving ``loss``'s numbers to the
        bit; the curve's losses then run in passes of probes instead of one by one.
    cell: the cell ``losses`` belongs to, for its embedding's row probes (see ``_stack``).

    Returns ``{"parameter", "index", "steps", "errors", "reference", "step_used"}``.
    """
    scales = np.logspace(-1, -13, 25) if scales is None else np.asarray(scales)
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    theta = work[name]
    old = float(theta[index])
    steps = [float((old + c * max(1.0, abs(old))) - old) for c in scales]
    # the probes theta_i + h, theta_i - h of every step h, in that order
    values = np.array([old + sign * h for h in steps for sign in (1.0, -1.0)])
    if losses is None:
        found = []
        for value in values:
            theta[index] = value
            found.append(float(loss(work)))
        theta[index] = old
    else:
        flat = np.ravel_multi_index(tuple(np.atleast_1d(index)), theta.shape)
        # the pairs a pass takes, as the numeric oracle's passes (``_stack_limit``)
        pairs = _stack_limit(len(steps), theta, 2, cell, name)
        found = []
        for chunk in _chunks(values, 2 * pairs):
            found += [float(f) for f in losses(_stack(work, name, np.full(len(chunk), flat),
                                                      chunk, cell))]
    # (L(theta + h) - L(theta - h)) / 2h
    errors = [abs((found[2 * k] - found[2 * k + 1]) / (2.0 * h) - float(reference))
              for k, h in enumerate(steps)]
    return {"parameter": name, "index": [int(i) for i in index], "steps": steps,
            "errors": errors, "reference": float(reference),
            "step_used": float(element_steps(np.array([old]))[0])}


# ------------------------------------------------------------ vectorised probes
def _kinks(f_plus, f_minus, f0, h):
    """Elementwise kink flags from the one-sided differences (every path's rule).

    The gap between them is a kink's jump in slope, h L'' on a curve, or rounding,
    about 2 eps |L| / h: the bound is KINK_RTOL of the slope, a floor, and eight
    times that rounding (a loss summed to 1e5 flagged smooth elements without it).
    """
    # forward = (L(theta + h) - L(theta)) / h,  backward = (L(theta) - L(theta - h)) / h
    fwd, bwd = (f_plus - f0) / h, (f0 - f_minus) / h
    bound = (KINK_RTOL * np.maximum(np.abs(fwd), np.abs(bwd)) + 1e3 * STEP_SCALE ** 2
             + ROUNDING_GAP * np.abs(f0) / h)
    return np.abs(fwd - bwd) > bound


def probe_chunk(cell, batch, chunk=None, workers: int = 1, processes: bool = False) -> int:
    """How many perturbed elements one vectorised pass takes (each gives one or two probes).

    cell: the cell (its ``config.hidden_size`` sizes the per-step arrays).
    batch: the batch (its size B).
    chunk: an explicit number, returned as is; None picks one so that a per-step
        gate array over the probes holds about ``PROBE_BYTES`` (one worker, or
        processes) or ``PROBE_BYTES_THREADED`` (several threads).
    workers: how many passes run at once.
    processes: whether they run in forked processes (each with a core of its own).
    """
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise ValueError(f"chunk={chunk!r} must be a positive integer")
        return int(chunk)
    hidden = getattr(getattr(cell, "config", None), "hidden_size", 32)
    per_probe = 8 * 4 * hidden * max(1, batch.mask.shape[1])    # a (B, 4H) float64 array
    target = PROBE_BYTES if workers <= 1 or processes else PROBE_BYTES_THREADED
    return int(np.clip(target // (2 * per_probe), 1, 256))


def _stack(work, name, flat_index, values, cell=None, shared=None):
    """Probe stack: ``work[name]`` with element ``flat_index[p]`` set to ``values[p]``.

    The other parameters are stride-0 views, shared by every probe.  A table the
    cell reads only by row lookup (``cell.takes_perturbed_rows(name)``, an
    embedding) is passed as a PerturbedRows: the table once, one set element per
    probe, the same values as the copies.  ``shared``: a dict that keeps the views
    of each probe count for the next stack of the same ``work`` (each costs ~5 us).
    """
    P = len(values)
    views = None if shared is None else shared.get(P)
    if views is None:
        views = {k: np.broadcast_to(v, (P,) + v.shape) for k, v in work.items()}
        if shared is not None:
            shared[P] = views
    stack = dict(views)
    theta = work[name]
    if _takes_rows(cell, name, theta):
        rows, cols = np.unravel_index(flat_index, theta.shape)
        stack[name] = PerturbedRows(theta, rows, cols, values)
        return stack
    moved = np.empty((P, theta.size), dtype=np.result_type(theta, values))
    moved[...] = theta.reshape(1, -1)
    moved[np.arange(P), flat_index] = values
    stack[name] = moved.reshape((P,) + theta.shape)
    return stack


def _selected(elements, name, size) -> np.ndarray:
    """Flat indices to differentiate: every element, or those ``elements[name]`` marks."""
    chosen = (elements or {}).get(name)
    return np.arange(size) if chosen is None else np.flatnonzero(chosen)


def _chunks(indices, size):
    """``indices`` in consecutive pieces of at most ``size``."""
    return [indices[lo:lo + size] for lo in range(0, len(indices), size)]


def _takes_rows(cell, name, theta) -> bool:
    """Whether ``_stack`` passes ``theta`` to the cell as a PerturbedRows (no copies)."""
    takes = getattr(cell, "takes_perturbed_rows", None)
    return theta.ndim == 2 and takes is not None and bool(takes(name))


def _stack_limit(size: int, theta, probes_per_element: int, cell=None, name=None) -> int:
    """``size`` elements per pass, fewer when their perturbed copies of ``theta`` would
    exceed ``STACK_BYTES`` (at least one); a table passed as PerturbedRows is not copied."""
    if _takes_rows(cell, name, theta):
        return size
    per_element = probes_per_element * max(1, theta.nbytes)
    return max(1, min(size, STACK_BYTES // per_element))


def _pass_items(work, names, elements, size, probes_per_element, cell):
    """``(name, flat indices)`` of every pass, parameter by parameter: the selected
    elements in consecutive pieces of at most ``size`` (fewer for a large parameter,
    ``_stack_limit``)."""
    return [(name, i) for name in names
            for i in _chunks(_selected(elements, name, work[name].size),
                             _stack_limit(size, work[name], probes_per_element, cell, name))]


def _run_passes(run, one_pass, store, finish, names, items, out):
    """Every pass of ``items`` through the pool's ``run``: ``store(name, i, result)`` as
    each result arrives, and ``out[name] = finish(name)`` once a parameter's passes are
    all in (a parameter without passes at once), so an interrupted run keeps those.
    Names new to ``out`` end in the order of ``names``, whatever order they finished in
    (a name already there keeps its place, as ``central_differences`` leaves it)."""
    fresh = [name for name in names if name not in out]
    missing = dict.fromkeys(names, 0)
    for name, _ in items:
        missing[name] += 1
    for name in names:
        if not missing[name]:
            out[name] = finish(name)

    def on_result(k, result):
        name, i = items[k]
        store(name, i, result)
        progress.advance(len(i))
        missing[name] -= 1
        if not missing[name]:
            out[name] = finish(name)

    run(one_pass, items, on_result)
    for name in fresh:
        out[name] = out.pop(name)


def _has_losses(cell) -> bool:
    """Whether ``cell.losses`` can stand in for ``cell.loss``: it exists, computes the
    same function (``losses_match_loss``, when the cell says), and the BPTT is full
    (truncation surrogates run through the step interface instead)."""
    return (hasattr(cell, "losses") and getattr(cell, "losses_match_loss", True)
            and getattr(getattr(cell, "truncation", None), "kind", "full") == "full")


def _losses_for(cell, batch, losses=None):
    """The vectorised loss to try: ``losses`` when given (a truncation surrogate's), else
    ``cell.losses`` on ``batch`` where ``_has_losses`` says it stands in, else None."""
    if losses is not None:
        return losses
    if not _has_losses(cell):
        return None
    return lambda stack: cell.losses(stack, batch)


def vectorised_losses(cell, params, batch, loss):
    """The vectorised ``loss`` where it may stand in for ``loss`` here, else None.

    ``loss``'s own ``losses`` or the cell's (``_losses_for``), only when
    ``_batched_ready`` finds it gives ``loss``'s number to the bit
    (``batched_central_differences``'s rule).
    """
    losses = _losses_for(cell, batch, getattr(loss, "losses", None))
    if losses is None:
        return None
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    return losses if _batched_ready(cell, work, losses, float(loss(work))) else None


def _batched_ready(cell, work, losses, f0, strict=True) -> bool:
    """Whether the vectorised ``losses`` give the one-at-a-time numbers here.

    The vectorised loss at the unperturbed point, run through the probe path,
    must be ``f0``, the scalar loss: to the bit when ``strict`` (else to 1e-12
    relative).  A loss that is not a function of its inputs, or a BLAS that
    rounds stacked matrix products differently, falls back to the one-at-a-time
    path.
    """
    first = next(iter(work))
    flat = work[first].reshape(-1)
    both = losses(_stack(work, first, np.zeros(2, dtype=int), np.full(2, flat[0]), cell))
    if strict:
        return bool(np.all(both == f0))
    return bool(np.all(np.abs(both - f0) <= 1e-12 * max(1.0, abs(f0))))


def batched_central_differences(cell, params, batch, names=None, *, scale: float = STEP_SCALE,
                                chunk=None, elements=None, out=None, loss=None,
                                strict: bool = True, workers=None, losses=None, processes=None):
    """``{name: NumericGradient}``: central differences of the cell's loss, vectorised.

    cell: a cell with ``loss(params, batch)`` and, for the vectorised path,
        ``losses(stacked_params, batch)`` (see ``cells.stacked.StackedCell.losses``).
    params: the point of evaluation; not modified.
    batch: the batch the loss is evaluated on.
    names: which parameters to differentiate; all by default.
    scale: the relative step c.
    chunk: elements perturbed per vectorised pass (2 chunk probes); None sizes it.
    elements: ``{name: boolean mask or None}`` as in ``central_differences``.
    out: a dict filled as each parameter is finished (what an interrupted run keeps).
    loss: the scalar loss ``loss(params)`` (default ``cell.loss(params, batch)``): its
        value at ``params`` must match the vectorised one, and the fallback uses it.
    strict: use the vectorised path only when its unperturbed loss is the scalar
        loss to the bit (else to 1e-12 relative).
    workers: passes running at once (``probe_workers``; 1: this thread only).
    losses: the vectorised ``loss``, ``losses(stack)`` -> (P,) (default
        ``cell.losses(stack, batch)``): a truncation surrogate's ``losses``.
    processes: run the passes in forked processes rather than threads; None: when
        the cell says its passes may (``probes_fork_safe``) and ``can_fork()``.

    Same steps, same formulas and the same kink flags as ``central_differences``;
    each probe's loss is computed by the same operations as the scalar loss, so
    the results agree to the last bit (with the BLAS tested here).  Falls back
    to ``central_differences`` when ``_batched_ready`` says no.
    """
    loss = loss if loss is not None else (lambda p: cell.loss(p, batch))
    # a surrogate's own losses, or the cell's when ``_has_losses`` says they stand in
    losses = _losses_for(cell, batch, losses)
    vectorised = losses is not None
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    workers = probe_workers(workers) if vectorised else 1
    processes = forks_for(cell, processes)
    with probe_pool(workers, processes) as run:
        f0 = float(loss(work))
        if not (vectorised and _batched_ready(cell, work, losses, f0, strict)):
            return central_differences(loss, params, names, scale=scale, elements=elements,
                                       out=out)
        size = probe_chunk(cell, batch, chunk, workers, processes)
        names = names if names is not None else list(work)
        out = {} if out is None else out
        steps = {name: element_steps(work[name].reshape(-1), scale) for name in names}
        f_plus = {name: np.full(work[name].size, np.nan) for name in names}
        f_minus = {name: np.full(work[name].size, np.nan) for name in names}
        shared = {}                             # the stride-0 views, by probe count

        def one_pass(item):
            name, i = item
            flat = work[name].reshape(-1)
            # probes 2j and 2j + 1: theta_i + h_i and theta_i - h_i
            values = np.stack([flat[i] + steps[name][i], flat[i] - steps[name][i]],
                              axis=1).reshape(-1)
            return losses(_stack(work, name, np.repeat(i, 2), values, cell, shared))

        def store(name, i, f):
            f_plus[name][i], f_minus[name][i] = f[0::2], f[1::2]

        def finish(name):
            h = steps[name]
            # (L(theta + h) - L(theta - h)) / 2h
            value = (f_plus[name] - f_minus[name]) / (2.0 * h)
            with np.errstate(invalid="ignore"):
                kinks = _kinks(f_plus[name], f_minus[name], f0, h)
            shape = work[name].shape
            return NumericGradient(value.reshape(shape), kinks.reshape(shape))

        _run_passes(run, one_pass, store, finish, names,
                    _pass_items(work, names, elements, size, 2, cell), out)
    return out


# ------------------------------------------------------------------ complex step
def complex_step_refusal(cell) -> str | None:
    """Why the complex step cannot differentiate ``cell``, or None when it can.

    cell: a cell; it opts in with a true ``supports_complex_step`` and may say why
        not in ``complex_step_reason``.
    """
    if getattr(cell, "supports_complex_step", False):
        return None
    reason = getattr(cell, "complex_step_reason", None)
    return reason or ("the cell does not declare supports_complex_step: the complex step needs a "
                      "forward pass built from analytic, complex-safe functions")


def complex_step_disagreement(loss, params, *, directions: int = 3,
                              seed: int = 0) -> str | None:
    """Why the complex step cannot be trusted on ``loss``, or None when it agrees.

    loss: callable taking a dict of arrays (real or complex) and returning the loss.
    params: the point of evaluation (float64); not modified.
    directions: how many seeded random unit directions to try.
    seed: seeds them.

    The complex step is exact only where every function of the loss is analytic
    and carries the imaginary part through; np.abs, np.std, np.real, np.sign or
    a kink bend or drop it, and a cell that declares ``supports_complex_step``
    may still use one (a subclass that overrides a readout, say).  Along each
    direction v::

        complex step:  Im L(theta + i h v) / h                    (exact to rounding)
        central:       C(s) = (L(theta + s v) - L(theta - s v)) / 2s,  at s = e and e / 2

    with e = c max(1, |theta|_inf).  |C(e) - C(e/2)| measures the central
    difference's own error (its e^2 term and rounding), so the two must agree
    within ten times that, plus 1e-9 (1 + |C| + |L|) for rounding: a bound near
    the central difference's accuracy, not the check's tolerance, which over a
    direction through n elements would let a term spread over all of them pass.
    """
    rng = np.random.default_rng(seed)
    theta = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    e = STEP_SCALE * max([1.0] + [float(np.max(np.abs(t))) for t in theta.values() if t.size])
    f0 = abs(float(np.real(loss(theta))))
    for k in range(directions):
        v = {name: rng.standard_normal(np.shape(t)) for name, t in theta.items()}
        norm = np.sqrt(sum(float(np.sum(d * d)) for d in v.values())) or 1.0
        along = lambda s: {n: theta[n] + s * (v[n] / norm) for n in theta}   # noqa: E731
        try:
            complex_step = float(_imaginary(loss(along(1j * COMPLEX_STEP)), "the loss"))
        except ComplexStepError as exc:
            return str(exc)
        complex_step /= COMPLEX_STEP
        central = [(float(np.real(loss(along(s)))) - float(np.real(loss(along(-s))))) / (2 * s)
                   for s in (e, e / 2)]
        bound = 10 * abs(central[0] - central[1]) + 1e-9 * (1 + abs(central[0]) + f0)
        if abs(complex_step - central[0]) > bound:
            return (f"the complex step disagrees with central differences along a random "
                    f"direction (seed {seed}, direction {k}): {complex_step:.12g} against "
                    f"{central[0]:.12g} (their own error about {bound:.2g}); the loss is not "
                    "complex-safe (a function such as np.abs, np.std, np.real, np.sign or a "
                    "kink bends or drops the imaginary part): use the central differences "
                    "(--numeric batched)")
    return None


def _imaginary(value, what):
    """Im of a loss evaluated at a complex point; refuse a loss that dropped it."""
    if not np.iscomplexobj(value):
        raise ComplexStepError(f"{what} returned a real number for complex parameters: it is not "
                               "complex-safe (a float() or a real buffer drops the imaginary part)")
    return np.imag(value)


def complex_step(loss, params, names=None, *, step: float = COMPLEX_STEP, elements=None,
                 out=None):
    """``{name: NumericGradient}`` of a complex-safe ``loss`` by the complex step.

    loss: callable taking a dict of complex128 arrays and returning a complex number.
    params: the point of evaluation; not modified.
    names: which parameters to differentiate; all by default.
    step: the imaginary step h.
    elements: ``{name: boolean mask or None}`` as in ``central_differences``.
    out: a dict filled as each parameter is finished.

    No kinks are flagged: the complex step presumes an analytic loss.
    """
    work = {k: np.array(v, dtype=np.complex128, order="C", copy=True) for k, v in params.items()}
    out = {} if out is None else out
    for name in (names if names is not None else list(work)):
        theta = work[name]
        flat = theta.reshape(-1)                    # a view: perturb in place
        value = np.full(flat.size, np.nan)
        for i in _selected(elements, name, flat.size):
            old = flat[i]
            flat[i] = old + 1j * step
            # dL/dtheta_i = Im L(theta + i h e_i) / h
            value[i] = _imaginary(loss(work), "the loss") / step
            flat[i] = old
            progress.advance(1)
        out[name] = NumericGradient(value.reshape(theta.shape), np.zeros(theta.shape, dtype=bool))
    return out


def batched_complex_step(cell, params, batch, names=None, *, step: float = COMPLEX_STEP,
                         chunk=None, elements=None, out=None, loss=None, workers=None,
                         processes=None):
    """``{name: NumericGradient}`` by the complex step, vectorised over ``cell.losses``.

    cell: a cell with a true ``supports_complex_step`` (and ``losses`` to vectorise).
    params: the point of evaluation; not modified.
    batch: the batch the loss is evaluated on.
    names: which parameters to differentiate; all by default.
    step: the imaginary step h.
    chunk: elements perturbed per vectorised pass (one probe each); None sizes it.
    elements: ``{name: boolean mask or None}`` as in ``central_differences``.
    out: a dict filled as each parameter is finished.
    loss: the scalar loss for the one-at-a-time path (default: ``numeric_loss``).
    workers: passes running at once (``probe_workers``; 1: this thread only).
    processes: forked processes rather than threads, as in ``batched_central_differences``.

    Raises ComplexStepError when the cell does not support the complex step.
    """
    refusal = complex_step_refusal(cell)
    if refusal:
        raise ComplexStepError(refusal)
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    if not _has_losses(cell):
        loss = loss if loss is not None else numeric_loss(cell, work, batch)
        return complex_step(loss, work, names, step=step, elements=elements, out=out)
    workers = probe_workers(workers)
    processes = forks_for(cell, processes)
    size = 2 * probe_chunk(cell, batch, chunk, workers, processes)
    names = names if names is not None else list(work)
    out = {} if out is None else out
    value = {name: np.full(work[name].size, np.nan) for name in names}

    def one_pass(item):
        name, i = item
        losses = cell.losses(_stack(work, name, i, work[name].reshape(-1)[i] + 1j * step, cell),
                             batch)
        # dL/dtheta_i = Im L(theta + i h e_i) / h
        return _imaginary(losses, "cell.losses") / step

    def store(name, i, derivatives):
        value[name][i] = derivatives

    def finish(name):
        shape = work[name].shape
        return NumericGradient(value[name].reshape(shape), np.zeros(shape, dtype=bool))

    with probe_pool(workers, processes) as run:
        _run_passes(run, one_pass, store, finish, names,
                    _pass_items(work, names, elements, size, 2, cell), out)   # 2: complex
    return out


# --------------------------------------------------------------------- dispatch
def numeric_loss(cell, params, batch):
    """The loss the numeric oracle differentiates: ``cell.loss``, or the truncation surrogate.

    cell: the cell (``truncation`` other than full selects the surrogate).
    params: the point whose states the surrogate freezes.
    batch: the batch.
    """
    from gradcheck.truncation import surrogate_loss

    truncation = getattr(cell, "truncation", None)
    if truncation is None or truncation.kind == "full":
        return lambda p: cell.loss(p, batch)
    return surrogate_loss(cell, params, batch, truncation)


def numeric_gradient(cell, params, batch, names=None, *, method: str = "batched",
                     scale: float = STEP_SCALE, chunk=None, elements=None, out=None, loss=None,
                     workers=None, processes=None):
    """``{name: NumericGradient}`` of the numeric oracle, by ``method``.

    cell: the cell; with truncated BPTT the truncation surrogate is differentiated.
    params: the point of evaluation; not modified.
    batch: the batch.
    names: which parameters to differentiate; all by default.
    method: "central" (one element at a time), "batched" (vectorised central
        differences, the same numbers) or "complex" (the complex step).
    scale: the relative step c of the central differences.
    chunk: elements per vectorised pass; None sizes it.
    elements: ``{name: boolean mask or None}``: only marked elements (the rest NaN).
    out: a dict filled as each parameter is finished (what an interrupted run keeps).
    loss: the scalar loss or truncation surrogate the one-at-a-time paths use
        (default ``numeric_loss(cell, params, batch)``).
    workers: vectorised passes running at once (None: ``probe_workers()``).
    processes: run them in forked processes, not threads (None: when the cell's
        ``probes_fork_safe`` says they may; see ``gradcheck.probe_pool``).

    Raises ValueError for an unknown method, ComplexStepError when the cell
    cannot take the complex step.
    """
    if method not in NUMERIC_METHODS:
        raise ValueError(f"numeric method {method!r} is not one of {', '.join(NUMERIC_METHODS)}")
    total = sum(len(_selected(elements, name, np.size(params[name])))
                for name in (names if names is not None else params))
    with progress.task("numeric oracle", total):       # shown by a caller (the CLI's bar)
        return _numeric_gradient(cell, params, batch, names, method=method, scale=scale,
                                 chunk=chunk, elements=elements, out=out, loss=loss,
                                 workers=workers, processes=processes)


def _numeric_gradient(cell, params, batch, names, *, method, scale, chunk, elements, out, loss,
                      workers, processes):
    loss = loss if loss is not None else numeric_loss(cell, params, batch)
    truncated = getattr(getattr(cell, "truncation", None), "kind", "full") != "full"
    if method == "complex":
        return batched_complex_step(cell, params, batch, names, chunk=chunk, elements=elements,
                                    out=out, loss=loss, workers=workers, processes=processes)
    if method == "batched" and (not truncated or hasattr(loss, "losses")):
        # a truncation surrogate runs vectorised when it has its own ``losses``
        found = batched_central_differences(cell, params, batch, names, scale=scale, chunk=chunk,
                                            elements=elements, out=out, loss=loss,
                                            workers=workers, losses=getattr(loss, "losses", None),
                                            processes=processes)
    else:
        found = central_differences(loss, params, names, scale=scale, elements=elements, out=out)
    return unflag_curvature(loss, params, found, scale=scale)


def unflag_curvature(loss, params, found, *, scale: float = STEP_SCALE):
    """``found`` with the kink flags of smooth elements cleared: a flag is a claim that
    the one-sided differences disagree because of a kink, and small derivatives on a
    curved loss disagree too.

    loss: the scalar loss the differences were taken of.
    params: the point of evaluation; not modified.
    found: ``{name: NumericGradient}``, changed in place and returned.
    scale: the relative step c they were taken with.

    For each flagged element, the one-sided differences' gap and the central
    difference at h and at h / 2::

        D(s) = (L(+s) - 2 L(0) + L(-s)) / s      (s L'' on a smooth curve: halves with s)
        C(s) = (L(+s) - L(-s)) / 2s              (the same to O(s^2) on a smooth curve)

    A smooth element has D(h/2) / D(h) near 1/2 and C(h/2) = C(h) to a hundredth of
    D(h); a kink within h of theta_i meets both only if it sits within 2% of h
    from theta_i, where the ratio is near 1 instead.  Only flagged elements are
    evaluated again (four losses each), so the values are unchanged and the
    vectorised path stays bit-identical to the one-at-a-time one.
    """
    work = {k: np.array(v, dtype=np.float64, order="C", copy=True) for k, v in params.items()}
    f0 = None
    for name, got in found.items():
        flagged = np.flatnonzero(got.kinks)
        if not flagged.size:
            continue
        f0 = float(loss(work)) if f0 is None else f0
        flat = work[name].reshape(-1)                   # a view: perturb in place
        steps = element_steps(flat, scale)
        for i in flagged:
            old, h = flat[i], steps[i]

            def moved(s, i=i, old=old):
                flat[i] = old + s
                value = float(loss(work))
                flat[i] = old
                return value

            # the half step rounded so that theta_i + s is exact
            if curve_central(moved, f0, (h, (old + h / 2) - old)) is not None:
                got.kinks.flat[i] = False
    return found


def curve_central(f, f0, steps, ends=None):
    """C(h) of f(s) = L(theta + s v) where its one-sided differences disagree as on a
    smooth curve (``is_curve``), None where they disagree as at a kink.

    f: the loss along the move, f(0) = f0.
    steps: ``(h, h2)``, the step and (about) half of it.
    ends: ``(f(h), f(-h))`` when they are evaluated already.
    """
    h, h2 = steps
    f_plus, f_minus = ends if ends is not None else (f(h), f(-h))
    half = (f(h2), f(-h2))
    # D(s) = (f(s) - 2 f0 + f(-s)) / s,  C(s) = (f(s) - f(-s)) / 2s
    gaps = [(f_plus - 2.0 * f0 + f_minus) / h, (half[0] - 2.0 * f0 + half[1]) / h2]
    centrals = [(f_plus - f_minus) / (2.0 * h), (half[0] - half[1]) / (2.0 * h2)]
    return centrals[0] if is_curve(gaps, centrals) else None


def is_curve(gaps, centrals) -> bool:
    """Whether one-sided differences that disagree do so as on a smooth curve.

    gaps: ``(D(h), D(h/2))``, the one-sided differences' gap at the step and half of it.
    centrals: ``(C(h), C(h/2))``, the central differences there.

    On a curve the gap halves with the step and the central difference stays put
    (to a hundredth of the gap); a kink within the step meets both only within
    2% of the step from the point, where its gap stays near whole instead.
    """
    ratio = gaps[1] / gaps[0] if gaps[0] else np.inf
    return bool(0.35 <= ratio <= 0.65 and abs(centrals[1] - centrals[0]) <= 0.01 * abs(gaps[0]))
