"""The GRU of :mod:`cells.gru`, written symbolically and differentiated by the library.

The equations, shapes and parameter layout are exactly those of the NumPy
reference (see the module docstring of :mod:`cells.gru`): gate blocks
``r | z | h`` along the last axis of ``W``, ``U`` and ``b``; reset "before"
(``n = tanh(x W_h + b_h + (r * h) U_h)``) or "after"
(``n = tanh(x W_h + b_h + r * (h U_h + bn))``); ``h' = (1 - z) n + z h``;
masked steps carry the state over; readouts "lm" and "mean".

Each layer is one ``scan`` over time, as in the Theano LSTM tutorial: the input
projection ``x W + b`` of all steps is one product outside the loop, the scan
walks ``sequences=[mask, x_proj]`` from ``h_{-1} = 0`` with ``U`` (and ``bn``)
as non-sequences.

Truncated BPTT.  The config's ``truncate`` / ``truncation`` (parsed by
:func:`gradcheck.truncation.parse_truncation`, whose docstring defines both
semantics) decide the gradient; the returned loss is always the true loss.

``full``
    Ordinary ``grad`` of the loss through the scans.

``tail k``
    scan's own ``truncate_gradient=k`` on every layer's scan: each scan's
    backward pass covers only its last k steps, so the readout's use of h_t for
    t < T - k reaches only ``V`` and ``c``, and no layer passes gradient to the
    inputs of earlier steps.  k is a Python int in the graph: one compiled
    function per k.

``window k``
    scan has no such option, so the gradient is the autodiff of the
    truncation surrogate, built in the graph.  The ordinary forward scans give
    every layer's states h^l_t (and the true loss); ``disconnected_grad`` of
    them are the frozen states.  The windows are then unfolded into the batch
    axis: the window of step t covers steps t - k .. t (k + 1 steps) and starts
    from the frozen states entering step t - k, i.e. h^l_{t-k-1}, or zero when
    t - k <= 0.  Inputs and mask are padded with k leading steps (mask 0, so a
    padded step carries the zero initial state over unchanged), and window
    step j of step t reads padded step t + j: arrays ``(k + 1, T * B, ...)``.
    Each layer runs one scan over the k + 1 window steps with batch T * B
    (layer l's windowed input is layer l - 1's windowed output); the last
    window step of the top layer, reshaped to ``(T, B, H)``, feeds a second
    copy of the readout, and the gradient is that surrogate loss's.  Its value
    equals the loss, but the function returns the loss of the forward scans.
    k is a symbolic int64 input (``window_k``), so one compiled function
    serves every window k.  Calls pass ``min(k, T - 1)``: a window reaching
    past step 0 only adds padded steps that change nothing, so window
    k >= T - 1 is full BPTT (to rounding, as the summation order differs).
    Costs k + 1 times the forward work.

Parameters, inputs, targets and mask (and the window k) are all inputs of the
compiled function, and no size is baked into the graph, so one function per
structure ``(layers, reset, gate, readout, embedding, truncation kind, tail k,
backend)`` serves every size T, B, D, H, K, V and every parameter value.
Functions are compiled on first use and kept in the module-level ``_COMPILED``.
The machinery shared with the LSTM is in :mod:`cells.symbolic_stack`.
"""

from __future__ import annotations

from cells.gru import GRU, GRUConfig
from cells.symbolic_stack import SymbolicStack

__all__ = ["SymbolicGRU", "compiled_count"]

# structure key -> compiled function(*params, x, y, mask[, window_k]) -> [loss] + grads
_COMPILED: dict[tuple, object] = {}


def compiled_count() -> int:
    """How many functions this module has compiled (one per structure key)."""
    return len(_COMPILED)


class SymbolicGRU(SymbolicStack):
    """``loss`` and ``gradient`` of the GRU, by the backend's automatic differentiation."""

    name = "gru"
    reference_class = GRU
    config_class = GRUConfig
    state_count = 1                     # h
    _compiled = _COMPILED

    def _structure(self) -> tuple:
        c = self.config
        return (c.layers, c.reset, c.update, c.gate, c.readout, c.embedding)

    def _layer(self, bk, params, l, inputs, mask, initial, truncate_gradient=-1) -> list:
        """Layer l over ``inputs`` (S, N, D_l) from h0 = initial[0] (N, H): [h (S, N, H)]."""
        T = bk.tensor
        c = self.config
        gate = bk.sigmoid if c.gate == "sigmoid" else bk.hard_sigmoid

        def update(z, n, h):
            # h' = (1 - z) n + z h (update "old"), or z n + (1 - z) h (update "new")
            k = z if c.update == "old" else 1.0 - z
            return (1.0 - k) * n + k * h

        def carry(m_t, h_new, h):
            mt = m_t.dimshuffle(0, "x")                                   # (B, 1)
            return mt * h_new + (1.0 - mt) * h

        def step_before(m_t, xp_t, h, U):
            H = U.shape[0]
            rz = gate(xp_t[:, :2 * H] + T.dot(h, U[:, :2 * H]))           # (B, 2H) r | z
            r, z = rz[:, :H], rz[:, H:]
            n = T.tanh(xp_t[:, 2 * H:] + T.dot(r * h, U[:, 2 * H:]))     # (B, H)
            return carry(m_t, update(z, n, h), h)

        def step_after(m_t, xp_t, h, U, bn):
            H = U.shape[0]
            rz = gate(xp_t[:, :2 * H] + T.dot(h, U[:, :2 * H]))           # (B, 2H) r | z
            r, z = rz[:, :H], rz[:, H:]
            q = T.dot(h, U[:, 2 * H:]) + bn                               # (B, H)
            n = T.tanh(xp_t[:, 2 * H:] + r * q)                           # (B, H)
            return carry(m_t, update(z, n, h), h)

        W, U, b = params[f"W{l}"], params[f"U{l}"], params[f"b{l}"]
        xp = T.dot(inputs, W) + b                                         # (S, N, 3H)
        if c.reset == "before":
            step, non_seq = step_before, [U]
        else:
            step, non_seq = step_after, [U, params[f"bn{l}"]]
        return [bk.scan(step, sequences=[mask, xp], outputs_info=[initial[0]],
                        non_sequences=non_seq, truncate_gradient=truncate_gradient)]
