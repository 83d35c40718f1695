"""Truncated BPTT: the two semantics, and the surrogate losses that make them checkable.

A truncated gradient is not the gradient of the loss, but it is exactly the
gradient of a surrogate loss in which the state entering the truncation
window is frozen at its unperturbed value.  The surrogate can be
differentiated numerically, so truncated BPTT is checked exactly.

``window k`` (Williams and Peng's BPTT(h); the seed blog's ``bptt_truncate``)
    The readout's use of the top state h_t reaches the parameters only
    through steps max(0, t - k) .. t.  Surrogate: every h_t the readout uses
    is recomputed from the frozen states entering step t - k (all layers),
    running steps max(0, t - k) .. t with the perturbed parameters.

``tail k`` (Theano/PyTensor ``scan(truncate_gradient=k)``)
    The backward pass covers only the last k steps, T - k .. T - 1.  States
    before them are frozen: the readout's use of h_t for t < T - k reaches
    only the readout's own parameters.  Surrogate: the states entering step
    T - k are frozen; steps T - k .. T - 1 are recomputed.

``full`` (k = -1): ordinary BPTT.  Window k >= T - 1 and tail k >= T are full
BPTT too.

A cell that supports truncation exposes ``truncation`` (a :class:`Truncation`)
and the step interface the surrogates run: ``embed(params, batch)`` ->
inputs ``(T, B, ...)``, ``initial_state(batch_size)``, ``step(params, state,
x_t, m_t)`` -> state, ``output(state)`` -> what the readout sees (B, H), and
``readout_loss(params, outputs, batch)`` with outputs ``(T, B, H)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

__all__ = ["Truncation", "FULL", "TRUNCATIONS", "parse_truncation", "surrogate_loss", "run_steps",
           "step_states"]

TRUNCATIONS = ("window", "tail")


@dataclass(frozen=True)
class Truncation:
    """How far BPTT reaches back.

    kind: "full", "window" or "tail".
    k: the window length in steps (-1 for full).
    """

    kind: str = "full"
    k: int = -1

    def __post_init__(self):
        if self.kind == "full":
            if self.k != -1:
                raise ValueError(f"full BPTT takes k = -1, not {self.k}")
            return
        if self.kind not in TRUNCATIONS:
            raise ValueError(f"truncation={self.kind!r} is not one of full, window, tail")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"truncate={self.k!r} must be -1 (full) or a positive number of steps")

    def window_start(self, t: int, steps: int) -> int:
        """First step the backward pass reaches from the readout's use of h_t."""
        if self.kind == "window":
            return max(0, t - self.k)
        if self.kind == "tail":
            return max(0, steps - self.k)
        return 0

    def describe(self) -> str:
        return "full BPTT" if self.kind == "full" else f"{self.kind} k={self.k}"


FULL = Truncation()


def parse_truncation(truncate: int = -1, kind: str = "window") -> Truncation:
    """Truncation from the CLI's ``--truncate K --truncation window|tail``.

    truncate: -1 for full BPTT, else k >= 1 steps.
    kind: "window" or "tail" (ignored when truncate is -1).
    """
    if kind not in TRUNCATIONS:
        raise ValueError(f"truncation={kind!r} is not one of {', '.join(TRUNCATIONS)}")
    if isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer)):
        raise ValueError(f"truncate={truncate!r} must be an integer")
    if truncate == -1:
        return FULL
    if truncate < 1:
        raise ValueError(f"truncate={truncate} must be -1 (full) or at least 1")
    return Truncation(kind, int(truncate))


def run_steps(cell, params, x, mask, state, start, stop):
    """Steps start .. stop - 1 through the step interface, from ``state``.

    cell: has ``step(params, state, x_t, m_t)`` and ``output(state)``.
    params: the parameters of every step.
    x: the inputs (T, B, ...); mask: (T, B).
    state: the state entering step ``start``; not changed (a copy goes in, so a
        step that updates its state in place cannot alter a state kept elsewhere).
    start, stop: the steps.

    Returns the state after step stop - 1 and a copy of each step's output.
    """
    state = copy.deepcopy(state)
    outs = []
    for u in range(start, stop):
        state = cell.step(params, state, x[u], mask[u])
        outs.append(np.array(cell.output(state)))
    return state, outs


def step_states(cell, params, x, mask):
    """The states entering every step and the outputs of every step, one run.

    cell, params, x, mask: as for ``run_steps``.

    Returns ``(states, outs)``: states[t] enters step t (states[0] is the initial
    state, states[T] leaves the last step); outs[t] is step t's output (copies).
    """
    T, B = mask.shape
    states, outs = [cell.initial_state(B)], []
    for t in range(T):
        state, out = run_steps(cell, params, x, mask, states[t], t, t + 1)
        states.append(state)
        outs += out
    return states, outs


def surrogate_loss(cell, params0, batch, truncation: Truncation):
    """The loss whose exact gradient at ``params0`` is the truncated gradient.

    Returns ``loss(params)``; the frozen states are computed once, at ``params0``.
    For a cell whose ``steps_take_probes`` the function also has ``losses(stack)``:
    the (P,) surrogate losses of P parameter sets ``{name: (P, *shape)}`` in one
    vectorised pass, every probe by the same operations as ``loss`` (see
    ``cells.stacked.StackedCell.probe_params``).
    """
    T, B = batch.mask.shape
    mask = batch.mask
    # states_before[t] is the (all-layer) state entering step t, at params0
    states_before, outs0 = step_states(cell, params0, cell.embed(params0, batch), mask)

    def outputs(params, probes=False):
        """What the readout sees of every step under the surrogate: (T, B, H), or
        (P, T, B, H) for ``probe_params``' parameters (``probes``)."""
        x = cell.embed(params, batch)
        if probes and np.ndim(x) > 3:
            x = np.moveaxis(x, -3, 0)                           # (T, P, B, D): step u's are x[u]
        if truncation.kind == "full":
            _, outs = run_steps(cell, params, x, mask, cell.initial_state(B), 0, T)
        elif truncation.kind == "tail":
            start = truncation.window_start(T - 1, T)
            _, outs = run_steps(cell, params, x, mask, states_before[start], start, T)
            outs = outs0[:start] + outs
        else:
            outs = []
            for t in range(T):
                start = truncation.window_start(t, T)
                state, _ = run_steps(cell, params, x, mask, states_before[start], start, t + 1)
                outs.append(np.array(cell.output(state)))
        if not probes:
            return np.stack(outs)
        # the frozen outputs are the same for every probe: (B, H) -> (P, B, H), unless no
        # probe axis reached the steps (only the readout's parameters are stacked)
        return np.stack(np.broadcast_arrays(*outs), axis=-3)

    def loss(params):
        return cell.readout_loss(params, outputs(params), batch)

    if getattr(cell, "steps_take_probes", False):
        def losses(stack):
            P = next(len(v) for v in stack.values() if isinstance(v, np.ndarray))
            params = cell.probe_params(stack)
            top = outputs(params, probes=True)
            return np.broadcast_to(cell.readout_loss(params, top, batch), (P,)).copy()
        loss.losses = losses
    return loss
