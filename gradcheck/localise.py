"""Localise a gradient error to gate block and time step.

Two views, both comparing the hand BPTT with finite differences run through
the cell's step interface (``embed``, ``initial_state``, ``step``, ``output``,
``readout_loss``; see :mod:`gradcheck.truncation`):

- **step by gate**: parameters untied across time.  For step t and gate block
  g of a per-step parameter P, the numeric derivative of the loss when P is
  perturbed *at step t only* along a random Rademacher direction v supported
  on block g::

      d/de L(P at step t = P + e v) ~ (L(+e) - L(-e)) / 2e,   e = eps^(1/3)

  against ``<step_contributions[P][t], v>`` from the hand BPTT.

- **state adjoints**: for every layer and step, the numeric derivative of the
  loss when the state s_t carried out of step t is moved along a random
  direction u, against ``<state_adjoints[layer][t], u>``.  Walking backwards
  from the last step, the first step where they disagree is where the
  backward recursion first goes wrong.

A cell offers what this needs through ``gradient_details(params, batch)``
(see ``cells.gru.GRU.gradient_details``).  Only full BPTT is localised by time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck.finite_differences import STEP_SCALE, _chunks, _kinks, _stack_limit, curve_central
from gradcheck.params import ParamSpec
from gradcheck.probe_pool import forks_for, probe_pool, probe_workers
from gradcheck.tolerance import Tolerance, agree, same_loss
from gradcheck.truncation import run_steps, step_states

__all__ = ["Localisation", "DetailsMismatch", "StepInterfaceMismatch", "localise", "format_steps"]


class StepInterfaceMismatch(ValueError):
    """The step interface (``step``, ``output``, ``readout_loss``) computes another loss
    than ``loss()`` at the checked point: localisation, which moves parameters and
    states step by step through that interface, would describe another function."""


class DetailsMismatch(ValueError):
    """``gradient_details`` does not describe the gradient that was checked (the message
    says where): localising by its per-step contributions would describe another one.

    where: ``{name: boolean mask}`` of the elements where the two differ (empty when
        the shapes differ).
    """

    def __init__(self, message: str, where: dict | None = None):
        super().__init__(message)
        self.where = where or {}


@dataclass
class Localisation:
    """Per-step errors by gate block, and per-step state-adjoint errors.

    rows: one ``(parameter, block)`` per row of the step map.
    row_layers: the layer of each row's parameter (-1 for an embedding).
    step_excess: ``(len(rows), T)``: |analytic - numeric| / (atol + rtol max(|a|, |n|)),
        the worst over the directions tried; > 1 fails.
    step_values: ``(len(rows), T, 2)`` the analytic and numeric directional derivatives.
    adjoint_excess: ``(layers, T)`` likewise for the state adjoints.
    adjoint_values: ``(layers, T, 2)``.
    directions: how many random directions each entry tried.
    seed: the seed of those directions.
    state: the name of the carried state in sentences: "h" (GRU), "[h|c]" (LSTM),
        "s" for a cell that does not say (its ``state_name``).
    """

    rows: list[tuple[str, str | None]]
    row_layers: list[int]
    step_excess: np.ndarray
    step_values: np.ndarray
    adjoint_excess: np.ndarray
    adjoint_values: np.ndarray
    directions: int
    seed: int
    notes: list[str] = field(default_factory=list)
    state: str = "s"
    # set by check_gradients: whether an element comparison of the analytic gradient
    # with the numeric one failed (a sentence that finds nothing then says where the
    # mismatch is not)
    analytic_failed: bool = False

    @property
    def steps(self) -> int:
        return int(self.adjoint_excess.shape[1])

    def wrong_steps(self) -> dict[tuple[str, str | None], list[int]]:
        """``{(parameter, block): [steps where it fails]}`` for failing rows only."""
        return {row: [int(t) for t in np.flatnonzero(self.step_excess[i] > 1)]
                for i, row in enumerate(self.rows) if np.any(self.step_excess[i] > 1)}

    def first_divergence(self) -> dict[int, int | None]:
        """For each layer, the last step (first met going backwards) whose adjoint fails."""
        out = {}
        for layer, excess in enumerate(self.adjoint_excess):
            bad = np.flatnonzero(excess > 1)
            out[layer] = int(bad.max()) if bad.size else None
        return out

    def entry(self) -> tuple[int, int, list[tuple[str, str | None]]] | None:
        """Where the error enters in backward order: ``(step, layer, [(parameter, block)])``.

        BPTT runs from the last step down and, within a step, from the top layer
        down; the first failing step and layer met in that order are where the
        derivation first goes wrong.  Errors found later may be its echoes.
        """
        bad = self.step_excess > 1
        if not bad.any():
            return None
        t = int(np.flatnonzero(bad.any(axis=0)).max())
        layers = [self.row_layers[i] for i in np.flatnonzero(bad[:, t])]
        layer = max(layers)
        rows = [self.rows[i] for i in np.flatnonzero(bad[:, t]) if self.row_layers[i] == layer]
        return t, layer, rows

    def sentence(self) -> str:
        """One sentence: where the error enters, which blocks it covers, where the adjoint of
        the carried state (dL/dh for the GRU) first diverges."""
        entry = self.entry()
        if entry is None:
            text = "every per-step gate block agrees at every step"
        else:
            t, layer, rows = entry
            blocks = list(dict.fromkeys(b for _, b in rows if b is not None))
            params = list(dict.fromkeys(p for p, _ in rows))
            where = "the embedding" if layer < 0 else f"layer {layer}"
            text = (f"the error enters at t = {t} in {where}, "
                    + (f"block{'s' if len(blocks) > 1 else ''} {', '.join(blocks)} of "
                       if blocks else "")
                    + ", ".join(params))
            wrong = self.wrong_steps()
            spans = [f"{p}{' block ' + b if b else ''} wrong at {format_steps(wrong[(p, b)], self.steps)}"
                     for p, b in rows][:3]
            text += " (" + "; ".join(spans) + ")"
            echoes = len(wrong) - len(rows)
            if echoes:
                text += f"; {echoes} more block{'s' if echoes > 1 else ''} wrong further back"
        div = {l: t for l, t in self.first_divergence().items() if t is not None}
        if div:
            text += "; " + "; ".join(
                f"dL/d{self.state} of layer {l} first diverges at t = {t} (going backwards)"
                for l, t in sorted(div.items(), reverse=True))
        else:
            text += f"; dL/d{self.state} agrees at every step"
            if entry is None and self.analytic_failed:
                text += (": the mismatch is not in the steps' backward pass (look at the "
                         "readout, a loss term outside the steps, or the forward pass)")
        return text

    def as_dict(self) -> dict:
        return {
            "sentence": self.sentence(),
            "seed": self.seed,
            "directions": self.directions,
            "state": self.state,
            "rows": [{"parameter": p, "block": b, "layer": l}
                     for (p, b), l in zip(self.rows, self.row_layers)],
            "step_excess": _nested(self.step_excess),
            "step_values": _nested(self.step_values),
            "adjoint_excess": _nested(self.adjoint_excess),
            "adjoint_values": _nested(self.adjoint_values),
            "wrong_steps": [{"parameter": p, "block": b, "steps": s}
                            for (p, b), s in self.wrong_steps().items()],
            "first_divergence": {str(k): v for k, v in self.first_divergence().items()},
            "notes": self.notes,
        }


def _check_details(steps, analytic, tolerances) -> None:
    """DetailsMismatch naming the first parameter whose per-step contributions
    (``{name: (T, *shape)}``) do not sum to the analytic gradient ``analytic[name]``,
    with the elements where they differ in every such parameter (``where``)."""
    where, first = {}, None
    for name, per_step in steps.items():
        if name not in analytic or name not in tolerances:
            continue
        total, want = np.sum(per_step, axis=0), np.asarray(analytic[name], dtype=np.float64)
        if np.shape(total) != np.shape(want):
            raise DetailsMismatch(f"gradient_details() gives per-step contributions to {name} "
                                  f"of shape {np.shape(total)}, the gradient is {np.shape(want)}")
        tol = tolerances[name]
        # at least rounding's slack: the steps' shares are summed in another order
        bad = ~agree(total, want, Tolerance(max(tol.atol, 1e-12), max(tol.rtol, 1e-9)))
        if bad.any():
            where[name] = bad
            if first is None:
                worst = np.unravel_index(
                    int(np.argmax(np.where(bad, np.abs(total - want), -1.0))), want.shape)
                first = (f"gradient_details()'s per-step contributions to {name} sum to "
                         f"{float(total[worst]):.9g} at {[int(i) for i in worst]}, where the "
                         f"gradient checked is {float(want[worst]):.9g} (is gradient() "
                         "overridden without gradient_details()?)")
    if first is not None:
        raise DetailsMismatch(first, where=where)


def _nested(a):
    return np.where(np.isfinite(a), a, 1e300).tolist()


def format_steps(steps: list[int], total: int) -> str:
    """``[0, 1, 2, 4]`` -> "steps 0-2, 4"; all of them -> "every step"."""
    if len(steps) == total and total > 1:
        return "every step"
    runs, start = [], None
    for i, t in enumerate(steps):
        if start is None:
            start = t
        if i + 1 == len(steps) or steps[i + 1] != t + 1:
            runs.append(f"{start}" if start == t else f"{start}-{t}")
            start = None
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(runs)


def _run(cell, params, batch, base, at, step_params=None, offset=None):
    """Loss through the step interface, perturbed at step ``at`` only.

    base: ``(x, states, outs)`` of the unperturbed run (``step_states``): the steps
        before ``at`` are taken from it, the run starts from states[at].
    step_params: parameters used at step ``at`` only (untied across time).
    offset: ``(layer, delta)`` added to the state carried out of step ``at``.
    """
    T = batch.mask.shape[0]
    x, states, outs = base
    if step_params is None:
        p, x_at = params, x
    else:
        p, x_at = step_params, cell.embed(step_params, batch)
    state, out = run_steps(cell, p, x_at, batch.mask, states[at], at, at + 1)
    if offset is not None:
        state = list(state)
        state[offset[0]] = state[offset[0]] + offset[1]
        out = [np.array(cell.output(state))]
    state, rest = run_steps(cell, params, x, batch.mask, state, at + 1, T)
    return cell.readout_loss(params, np.stack(outs[:at] + out + rest), batch)


def _projections(a, v) -> np.ndarray:
    """(T, directions): sum over the trailing axes of a * v, a (T, 1, ...), v (T, d, ...)."""
    prod = a * v
    return prod.reshape(prod.shape[:2] + (-1,)).sum(axis=-1)


def _judged(analytic, numeric, tol: Tolerance):
    """``(excess (T,), values (T, 2))``: at each step the worst of the directions, by
    ``_excess``, with its analytic and numeric derivatives (the later direction on a
    tie); a direction whose numeric derivative is NaN (its move crossed a kink) is not
    judged, and a step with none judged keeps 0 and (0, 0)."""
    T, D = analytic.shape
    excess, values = np.zeros(T), np.zeros((T, 2))
    for t in range(T):
        for d in range(D):
            a, n = float(analytic[t, d]), numeric[t, d]
            if np.isnan(n):
                continue                # the move crossed a kink: not judged
            ex = _excess(a, n, tol)
            if ex >= excess[t]:
                excess[t], values[t] = ex, (a, n)
    return excess, values


def _excess(a, n, tol: Tolerance) -> float:
    if not (np.isfinite(a) and np.isfinite(n)):
        return np.inf
    if a == n:
        return 0.0                  # also where atol = 0 and both are 0
    return abs(a - n) / (tol.atol + tol.rtol * max(abs(a), abs(n)))


def _directional(f, f0, eps=STEP_SCALE):
    """f'(0) ~ (f(e) - f(-e)) / 2e, or NaN where the move crosses a kink (a hard sigmoid):
    such a direction is not judged.  One-sided differences that disagree are tried
    again at e / 2: a curve's gap halves (``curve_central``), a kink's does not."""
    f_plus, f_minus = f(eps), f(-eps)
    value = _difference(f_plus, f_minus, f0, eps)
    if np.isnan(value):
        curve = curve_central(f, f0, (eps, eps / 2), ends=(f_plus, f_minus))
        value = np.nan if curve is None else curve
    return value


def _difference(f_plus, f_minus, f0, eps):
    """(f(e) - f(-e)) / 2e, NaN on a kink (finite_differences' rule)."""
    if _kinks(np.float64(f_plus), f_minus, f0, eps):
        return np.nan
    return (f_plus - f_minus) / (2.0 * eps)


def _numeric(cell, params, batch, base, rows, step_dirs, adjoint_dirs, f0=None):
    """The numeric directional derivatives, one perturbed run of the step interface at a time.

    Returns ``(step, adjoint)``: step[i, t, d] along ``step_dirs[i][t][d]`` (row i's
    parameter moved at step t only), adjoint[layer, t, d] along ``adjoint_dirs``.
    ``f0``: the unperturbed run's loss, when the caller has it (else computed here).
    """
    T = batch.mask.shape[0]
    f0 = _base_loss(cell, params, batch, base) if f0 is None else f0
    step = np.zeros((len(rows), T, len(step_dirs[0][0]) if rows else 0))
    for i, (name, _, _, _) in enumerate(rows):
        for t in range(T):
            for d, v in enumerate(step_dirs[i][t]):

                def f(e, name=name, v=v, t=t):
                    moved = dict(params)
                    moved[name] = params[name] + e * v
                    return _run(cell, params, batch, base, t, step_params=moved)
                step[i, t, d] = _directional(f, f0)
    adjoint = np.zeros((len(adjoint_dirs), T, len(adjoint_dirs[0][0]) if adjoint_dirs else 0))
    for layer, by_step in enumerate(adjoint_dirs):
        for t in range(T):
            for d, u in enumerate(by_step[t]):
                adjoint[layer, t, d] = _directional(
                    lambda e, t=t, u=u, layer=layer: _run(cell, params, batch, base, t,
                                                          offset=(layer, e * u)), f0)
    return step, adjoint


def _numeric_batched(cell, params, batch, base, rows, step_dirs, adjoint_dirs, f0=None,
                     eps=STEP_SCALE):
    """``_numeric``'s derivatives with the probes along a leading axis, for a cell whose
    ``steps_take_probes`` (``probe_params`` stacks the parameters for ``step``).

    For each step t, every +e v and -e v of the rows runs as one probe batch: step t with
    the stacked parameters, then steps t + 1 .. T - 1 on (P, B, ...) states; likewise
    every +e u and -e u of the state adjoints.  The same differences as ``_numeric``,
    to rounding (the products run on stacked arrays).  The steps run on worker
    processes (``gradcheck.probe_pool``) where the numeric oracle's would: the same
    numbers whichever process computes a step.  ``f0`` as in ``_numeric``.
    """
    T = batch.mask.shape[0]
    x, states, outs = base
    f0 = _base_loss(cell, params, batch, base) if f0 is None else f0
    step = np.zeros((len(rows), T, len(step_dirs[0][0]) if rows else 0))
    adjoint = np.zeros((len(adjoint_dirs), T, len(adjoint_dirs[0][0]) if adjoint_dirs else 0))

    def one_step(t):
        """Step t's differences: its rows of ``step`` and of ``adjoint``.  Every probe of
        the step, the rows' and the states', runs steps t + 1 .. T - 1 in one batch."""
        step_t, adjoint_t = np.zeros_like(step[:, t]), np.zeros_like(adjoint[:, t])
        probes = [(i, d, rows[i][0], v) for i in range(len(rows))
                  for d, v in enumerate(step_dirs[i][t])]
        moved_states = []           # per batch of probes: the states carried out of step t
        for chunk in _probe_chunks(probes, params):
            P = 2 * len(chunk)
            moved = {k: np.broadcast_to(v, (P,) + np.shape(v)) for k, v in params.items()}
            for k, (_, _, name, v) in enumerate(chunk):
                if moved[name].strides[0] == 0:                 # P copies, in the sums' dtype
                    moved[name] = moved[name].astype(np.result_type(params[name], v, eps))
                moved[name][2 * k] = params[name] + eps * v        # theta + e v, at step t only
                moved[name][2 * k + 1] = params[name] + (-eps) * v
            stack = cell.probe_params(moved)
            x_t = cell.embed(stack, batch)[..., t, :, :]
            # a layer below the moved parameter's comes out once for every probe: P copies
            moved_states.append([np.broadcast_to(s, (P,) + np.shape(before)) for s, before
                                 in zip(cell.step(stack, states[t], x_t, batch.mask[t]),
                                        states[t + 1])])
        adjoints = [(layer, d, u) for layer in range(len(adjoint_dirs))
                    for d, u in enumerate(adjoint_dirs[layer][t])]
        if adjoints:
            P = 2 * len(adjoints)
            state = [np.broadcast_to(s, (P,) + np.shape(s)).copy() for s in states[t + 1]]
            for k, (layer, _, u) in enumerate(adjoints):
                # the state carried out of step t, moved by +e u and -e u
                state[layer][2 * k] = states[t + 1][layer] + eps * u
                state[layer][2 * k + 1] = states[t + 1][layer] + (-eps) * u
            moved_states.append(state)
        if not moved_states:
            return step_t, adjoint_t
        state = [np.concatenate(layer) for layer in zip(*moved_states)]
        f = _finish(cell, params, batch, base, t, state, len(state[0]))
        for k, (i, d, _, _) in enumerate(probes):
            # (L(+e) - L(-e)) / 2e
            step_t[i, d] = _difference(f[2 * k], f[2 * k + 1], f0, eps)
        f = f[2 * len(probes):]
        for k, (layer, d, _) in enumerate(adjoints):
            adjoint_t[layer, d] = _difference(f[2 * k], f[2 * k + 1], f0, eps)
        return step_t, adjoint_t

    def store(t, found):
        step[:, t], adjoint[:, t] = found

    # the steps at once on worker processes, where the numeric oracle's passes would
    # fork (on threads these small batches would wait for each other's GIL: one at a time)
    forks = forks_for(cell)
    with probe_pool(probe_workers() if forks else 1, forks) as run:
        run(one_step, list(range(T)), store)
    # the few moves whose one-sided differences disagree: again one at a time, where
    # ``_directional`` tells a curve from a kink
    for i, t, d in np.argwhere(np.isnan(step)):
        name, v = rows[i][0], step_dirs[i][t][d]
        step[i, t, d] = _directional(lambda e, name=name, v=v, t=t: _run(
            cell, params, batch, base, t, step_params={**params, name: params[name] + e * v}),
            f0, eps)
    for layer, t, d in np.argwhere(np.isnan(adjoint)):
        u = adjoint_dirs[layer][t][d]
        adjoint[layer, t, d] = _directional(lambda e, t=t, u=u, layer=layer: _run(
            cell, params, batch, base, t, offset=(layer, e * u)), f0, eps)
    return step, adjoint


def _base_loss(cell, params, batch, base):
    """The loss of the unperturbed run of the step interface (``base``)."""
    x, _, outs = base
    return float(np.asarray(cell.readout_loss(params, np.stack(outs), batch)).reshape(()))


def _probe_chunks(probes, params):
    """``probes`` in runs whose stacked copies of the parameters stay under STACK_BYTES
    (two probes per direction, each a copy of the largest parameter moved)."""
    if not probes:
        return []
    largest = max((params[name] for _, _, name, _ in probes), key=np.size)
    return _chunks(probes, _stack_limit(len(probes), np.asarray(largest, np.float64), 2))


def _finish(cell, params, batch, base, t, state, P):
    """The (P,) losses from ``state`` (leading probe axis), the state carried out of
    step t: its output, steps t + 1 .. T - 1 with ``params``, the readout."""
    x, _, outs = base
    T = batch.mask.shape[0]
    top = [cell.output(state)]
    for u in range(t + 1, T):
        state = cell.step(params, state, x[u], batch.mask[u])
        top.append(cell.output(state))
    shape = (P,) + np.shape(outs[0])
    top = np.stack([np.broadcast_to(o, shape) for o in outs[:t] + top], axis=1)   # (P, T, B, H)
    return np.broadcast_to(cell.readout_loss(params, top, batch), (P,))


def localise(cell, params, batch, specs: list[ParamSpec], tolerances: dict[str, Tolerance],
             *, directions: int = 2, seed: int = 0, analytic=None) -> Localisation | None:
    """Step-by-gate and state-adjoint errors of the hand BPTT, or None if the cell
    does not expose ``gradient_details`` or truncates its BPTT.

    analytic: ``{name: array}``, the analytic gradient that was checked; when given,
        the per-step contributions must sum to it (within ``tolerances``), else
        DetailsMismatch: a subclass that overrides ``gradient`` but inherits
        ``gradient_details`` would otherwise be localised by the inherited,
        different, gradient.
    """
    if not hasattr(cell, "gradient_details") or not hasattr(cell, "step"):
        return None
    truncation = getattr(cell, "truncation", None)
    if truncation is not None and truncation.kind != "full":
        return None
    details = cell.gradient_details(params, batch)
    steps = details["step_contributions"]
    if analytic is not None:
        _check_details(steps, analytic, tolerances)
    adjoints = details["state_adjoints"]
    T = batch.mask.shape[0]
    rng = np.random.default_rng(seed)
    x = cell.embed(params, batch)
    base = (x,) + step_states(cell, params, x, batch.mask)
    stepped = _base_loss(cell, params, batch, base)
    whole = float(details["loss"]) if "loss" in details else float(cell.loss(params, batch))
    if not same_loss(stepped, whole):
        raise StepInterfaceMismatch(
            f"the step interface and loss() compute different losses: step(), output() and "
            f"readout_loss() give {stepped!r} where loss() gives {whole!r} at the same point")

    rows = []
    for spec in specs:
        if spec.name not in steps:
            continue
        blocks = spec.block_slices() or {None: tuple(slice(None) for _ in spec.shape)}
        rows += [(spec.name, name, idx, spec.layer if spec.layer is not None else 0)
                 for name, idx in blocks.items()]
    # the random directions: v supported on one block of one parameter, u on one state;
    # each row's (T, directions) moves drawn at once, and held as views of one array
    moves = []                                  # per row: (T, directions, *parameter shape)
    for name, _, idx, _ in rows:
        along = (slice(None), slice(None)) + tuple(idx)
        v = np.zeros((T, directions) + np.shape(params[name]), dtype=np.result_type(params[name]))
        v[along] = rng.choice([-1.0, 1.0], size=v[along].shape)
        moves.append(v)
    step_dirs = [[list(v[t]) for t in range(T)] for v in moves]
    state_moves = [rng.choice([-1.0, 1.0], size=(T, directions) + np.shape(adj)[1:])
                   for adj in adjoints]                 # per layer: (T, directions, B, S)
    adjoint_dirs = [[list(u[t]) for t in range(T)] for u in state_moves]

    numeric_of = _numeric_batched if getattr(cell, "steps_take_probes", False) else _numeric
    step_numeric, adjoint_numeric = numeric_of(cell, params, batch, base, rows, step_dirs,
                                               adjoint_dirs, f0=stepped)
    step_excess, step_values = np.zeros((len(rows), T)), np.zeros((len(rows), T, 2))
    for i, ((name, _, idx, _), v) in enumerate(zip(rows, moves)):
        along = (slice(None), slice(None)) + tuple(idx)
        # <step_contributions[name][t], v>: the block's elements alone (v is 0 elsewhere)
        analytic = _projections(np.asarray(steps[name])[along[:1] + along[2:]][:, None], v[along])
        step_excess[i], step_values[i] = _judged(analytic, step_numeric[i], tolerances[name])
    tol = next(iter(tolerances.values()))
    layers = len(adjoints)
    adjoint_excess, adjoint_values = np.zeros((layers, T)), np.zeros((layers, T, 2))
    for layer, (adj, u) in enumerate(zip(adjoints, state_moves)):
        adjoint_excess[layer], adjoint_values[layer] = _judged(
            _projections(np.asarray(adj)[:, None], u), adjoint_numeric[layer], tol)
    return Localisation(rows=[(n, b) for n, b, _, _ in rows],
                        row_layers=[l for _, _, _, l in rows], step_excess=step_excess,
                        step_values=step_values, adjoint_excess=adjoint_excess,
                        adjoint_values=adjoint_values, directions=directions, seed=seed,
                        state=getattr(cell, "state_name", "s"))
