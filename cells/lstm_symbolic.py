"""The LSTM of :mod:`cells.lstm`, written symbolically and differentiated by the library.

The equations, shapes and parameter layout are exactly those of the NumPy
reference (see the module docstring of :mod:`cells.lstm`): gate blocks
``i | f | o | c`` along the last axis of ``W``, ``U`` and ``b``;
``c' = f * c + i * tanh(a_c)``, ``h' = o * tanh(c')``; masked steps carry both
h and c over; readouts "lm" and "mean".

Each layer is one ``scan`` over time, as in the Theano LSTM tutorial: the input
projection ``x W + b`` of all steps is one product outside the loop, the scan
walks ``sequences=[mask, x_proj]`` from ``h_{-1} = c_{-1} = 0``
(``outputs_info=[h0, c0]``) with ``U`` as its non-sequence.

Truncated BPTT, exactly as :mod:`cells.gru_symbolic` does it (its module
docstring has the details); the returned loss is always the true loss.

``full``
    Ordinary ``grad`` of the loss through the scans.

``tail k``
    scan's own ``truncate_gradient=k`` on every layer's scan.  k is a Python
    int in the graph: one compiled function per k.

``window k``
    The autodiff of the truncation surrogate, built in the graph: the windows
    t - k .. t are unfolded into the batch axis (``(k + 1, T * B, ...)``), each
    layer's window scan starts from the frozen (``disconnected_grad``) states
    h and c entering step t - k (zero when t - k <= 0), and the last window
    step of the top layer feeds a second copy of the readout.  k is a symbolic
    int64 input (``window_k``), so one compiled function serves every window
    k; calls pass ``min(k, T - 1)``.

Parameters, inputs, targets and mask (and the window k) are all inputs of the
compiled function, and no size is baked into the graph, so one function per
structure ``(layers, gate, readout, embedding, truncation kind, tail k,
backend)`` serves every size T, B, D, H, K, V and every parameter value.
Functions are compiled on first use and kept in the module-level ``_COMPILED``.
The machinery shared with the GRU is in :mod:`cells.symbolic_stack`.
"""

from __future__ import annotations

from cells.lstm import LSTM, LSTMConfig
from cells.symbolic_stack import SymbolicStack

__all__ = ["SymbolicLSTM", "compiled_count"]

# structure key -> compiled function(*params, x, y, mask[, window_k]) -> [loss] + grads
_COMPILED: dict[tuple, object] = {}


def compiled_count() -> int:
    """How many functions this module has compiled (one per structure key)."""
    return len(_COMPILED)


class SymbolicLSTM(SymbolicStack):
    """``loss`` and ``gradient`` of the LSTM, by the backend's automatic differentiation."""

    name = "lstm"
    reference_class = LSTM
    config_class = LSTMConfig
    state_count = 2                     # h, c
    _compiled = _COMPILED

    def _structure(self) -> tuple:
        c = self.config
        return (c.layers, c.gate, c.readout, c.embedding)

    def _layer(self, bk, params, l, inputs, mask, initial, truncate_gradient=-1) -> list:
        """Layer l over ``inputs`` (S, N, D_l) from [h0, c0] (N, H): [h, c] (S, N, H)."""
        T = bk.tensor
        gate = bk.sigmoid if self.config.gate == "sigmoid" else bk.hard_sigmoid

        def step(m_t, xp_t, h, cell, U):
            H = U.shape[0]
            a = xp_t + T.dot(h, U)                                        # (B, 4H) i | f | o | c
            ifo = gate(a[:, :3 * H])                                      # (B, 3H)
            i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
            c_new = f * cell + i * T.tanh(a[:, 3 * H:])                   # (B, H)
            h_new = o * T.tanh(c_new)
            mt = m_t.dimshuffle(0, "x")                                   # (B, 1)
            return [mt * h_new + (1.0 - mt) * h, mt * c_new + (1.0 - mt) * cell]

        W, U, b = params[f"W{l}"], params[f"U{l}"], params[f"b{l}"]
        xp = T.dot(inputs, W) + b                                         # (S, N, 4H)
        hs, cs = bk.scan(step, sequences=[mask, xp], outputs_info=list(initial),
                         non_sequences=[U], truncate_gradient=truncate_gradient)
        return [hs, cs]
