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
"""

from __future__ import annotations

import numpy as np

from cells import backend as backends
from cells.lstm import LSTM, LSTMConfig
from gradcheck.batch import Batch
from gradcheck.params import ParamSpec
from gradcheck.truncation import parse_truncation

__all__ = ["SymbolicLSTM", "compiled_count"]

# structure key -> compiled function(*params, x, y, mask[, window_k]) -> [loss] + grads
_COMPILED: dict[tuple, object] = {}


def compiled_count() -> int:
    """How many functions this module has compiled (one per structure key)."""
    return len(_COMPILED)


class SymbolicLSTM:
    """``loss`` and ``gradient`` of the LSTM, by the backend's automatic differentiation.

    The gradient is truncated as ``config.truncate`` / ``config.truncation`` say,
    exactly as the NumPy reference's hand BPTT is.
    """

    name = "lstm"

    def __init__(self, config: LSTMConfig | None = None, backend: str = "pytensor", **kwargs):
        if config is not None and kwargs:
            raise TypeError("give either a config or LSTMConfig fields, not both: "
                            f"{sorted(kwargs)}")
        self.config = config if config is not None else LSTMConfig(**kwargs)
        if backend not in backends.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose pytensor or theano")
        self.backend = backend
        self.truncation = parse_truncation(self.config.truncate, self.config.truncation)
        self.reference = LSTM(self.config)

    # ----------------------------------------------------------------- layout
    def param_specs(self) -> list[ParamSpec]:
        return self.reference.param_specs()

    @property
    def key(self) -> tuple:
        """The structure that decides the compiled graph (no sizes; no window k)."""
        c = self.config
        tr = self.truncation
        k = tr.k if tr.kind == "tail" else None      # window k is an input of the function
        return (c.layers, c.gate, c.readout, c.embedding, tr.kind, k, self.backend)

    # ------------------------------------------------------------ evaluation
    def loss_and_gradient(self, params, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
        self.reference.check_inputs(params, batch)
        specs = self.param_specs()
        x = np.asarray(batch.x)
        x = x.astype(np.int64) if self.config.embedding else x.astype(np.float64)
        args = [np.asarray(params[s.name], dtype=np.float64) for s in specs]
        args += [x, np.asarray(batch.y, dtype=np.int64), np.asarray(batch.mask, dtype=np.float64)]
        if self.truncation.kind == "window":
            # a window reaching before step 0 adds only padded steps that change nothing
            args.append(np.int64(min(self.truncation.k, max(x.shape[0] - 1, 0))))
        outputs = self._function()(*args)
        grads = {s.name: np.array(g, dtype=np.float64).reshape(s.shape)
                 for s, g in zip(specs, outputs[1:])}
        return float(outputs[0]), grads

    def loss(self, params, batch: Batch) -> float:
        return self.loss_and_gradient(params, batch)[0]

    def gradient(self, params, batch: Batch) -> dict[str, np.ndarray]:
        return self.loss_and_gradient(params, batch)[1]

    # ----------------------------------------------------------------- graph
    def _function(self):
        key = self.key
        if key not in _COMPILED:
            _COMPILED[key] = self._compile()
        return _COMPILED[key]

    def _compile(self):
        bk = backends.load(self.backend)
        T = bk.tensor
        c = self.config
        tr = self.truncation
        gate = bk.sigmoid if c.gate == "sigmoid" else bk.hard_sigmoid

        specs = self.param_specs()
        params = {}
        for s in specs:
            params[s.name] = (T.dmatrix if len(s.shape) == 2 else T.dvector)(s.name)
        x_in = T.lmatrix("ids") if c.embedding else T.dtensor3("x")     # (T, B) or (T, B, D)
        y = T.lmatrix("y") if c.readout == "lm" else T.lvector("y")      # (T, B) or (B,)
        m = T.dmatrix("mask")                                             # (T, B)
        steps, B = m.shape[0], m.shape[1]

        if c.embedding:
            E = params["E"]
            x = E[x_in.flatten()].reshape((steps, B, E.shape[1]))        # (T, B, D)
        else:
            x = x_in

        def step(m_t, xp_t, h, cell, U):
            H = U.shape[0]
            a = xp_t + T.dot(h, U)                                        # (B, 4H) i | f | o | c
            ifo = gate(a[:, :3 * H])                                      # (B, 3H)
            i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
            c_new = f * cell + i * T.tanh(a[:, 3 * H:])                   # (B, H)
            h_new = o * T.tanh(c_new)
            mt = m_t.dimshuffle(0, "x")                                   # (B, 1)
            return [mt * h_new + (1.0 - mt) * h, mt * c_new + (1.0 - mt) * cell]

        def layer(l, inputs, mask, h0, c0, truncate_gradient=-1):
            """Layer l over ``inputs`` (S, N, D_l) from h0, c0 (N, H): h and c (S, N, H)."""
            W, U, b = params[f"W{l}"], params[f"U{l}"], params[f"b{l}"]
            xp = T.dot(inputs, W) + b                                     # (S, N, 4H)
            hs, cs = bk.scan(step, sequences=[mask, xp], outputs_info=[h0, c0],
                             non_sequences=[U], truncate_gradient=truncate_gradient)
            return hs, cs

        def readout_loss(top):
            """The loss from the top layer's states ``top`` (T, B, H)."""
            V, cb = params["V"], params["c"]
            Bf = T.cast(B, "float64")
            if c.readout == "lm":
                logp = bk.log_softmax(T.dot(top, V) + cb)                 # (T, B, K)
                flat = logp.reshape((steps * B, logp.shape[2]))           # (T B, K)
                nll = -flat[T.arange(steps * B), y.flatten()]             # (T B,)
                return T.sum(m.flatten() * nll) / Bf
            count = T.maximum(m.sum(axis=0), 1.0)                         # (B,)
            pooled = (m.dimshuffle(0, 1, "x") * top).sum(axis=0) \
                / count.dimshuffle(0, "x")                                # (B, H)
            logp = bk.log_softmax(T.dot(pooled, V) + cb)                  # (B, K)
            return -T.sum(logp[T.arange(B), y]) / Bf

        # the forward scans: the true states of every layer, and the true loss
        truncate_gradient = tr.k if tr.kind == "tail" else -1
        states = []                                                       # per layer (hs, cs)
        h = x
        for l in range(c.layers):
            U = params[f"U{l}"]
            h0 = T.alloc(np.float64(0.0), B, U.shape[0])                  # (B, H)
            c0 = T.alloc(np.float64(0.0), B, U.shape[0])                  # (B, H)
            h, cs = layer(l, h, m, h0, c0, truncate_gradient)             # (T, B, H) each
            states.append((h, cs))
        loss = readout_loss(h)

        inputs = [params[s.name] for s in specs] + [x_in, y, m]
        if tr.kind == "window":
            k = T.lscalar("window_k")
            inputs.append(k)
            surrogate = readout_loss(self._window_states(bk, params, k, x, m, states, layer))
        else:
            surrogate = loss
        wrt = [params[s.name] for s in specs]
        grads = bk.grad(surrogate, wrt)
        return bk.function(inputs, [loss] + list(grads))

    @staticmethod
    def _window_states(bk, params, k, x, m, states, layer):
        """Top states h (T, B, H) recomputed, for every step t, over the window t - k .. t
        from the frozen h and c entering step t - k (see SymbolicGRU._window_states)."""
        T = bk.tensor
        steps, B = m.shape[0], m.shape[1]
        span = k + 1                                                      # steps per window
        # window step j of step t reads padded step t + j, padded step p being step p - k
        rows = (T.arange(span).dimshuffle(0, "x") + T.arange(steps).dimshuffle("x", 0)).flatten()

        def unfold(seq):
            """(T, B, ...) -> (k + 1, T B, ...), with k leading zero steps padded."""
            rest = tuple(seq.shape[i] for i in range(2, seq.ndim))
            pad = T.zeros((k, B) + rest, dtype="float64")                 # (k, B, ...)
            windows = T.concatenate([pad, seq], axis=0)[rows]             # ((k + 1) T, B, ...)
            return windows.reshape((span, steps * B) + rest)

        def entering(l, seq):
            """The frozen state entering step t - k, for every t: (T B, H), zero when t - k <= 0."""
            H = params[f"U{l}"].shape[0]
            frozen = T.specify_shape(bk.disconnected_grad(seq), (steps, B, H))   # (T, B, H)
            zeros = T.zeros((span, B, H), dtype="float64")
            start = T.concatenate([zeros, frozen], axis=0)[:steps]        # (T, B, H)
            return start.reshape((steps * B, H))

        mask = unfold(m)                                                  # (k + 1, T B)
        h = unfold(x)                                                     # (k + 1, T B, D)
        for l, (hs, cs) in enumerate(states):
            H = params[f"U{l}"].shape[0]
            h, _ = layer(l, h, mask, entering(l, hs), entering(l, cs))
            h = T.specify_shape(h, (span, steps * B, H))                  # (k + 1, T B, H)
        return h[-1].reshape((steps, B, H))                               # (T, B, H)
