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
"""

from __future__ import annotations

import numpy as np

from cells import backend as backends
from cells.gru import GRU, GRUConfig
from gradcheck.batch import Batch
from gradcheck.params import ParamSpec
from gradcheck.truncation import parse_truncation

__all__ = ["SymbolicGRU", "compiled_count"]

# structure key -> compiled function(*params, x, y, mask[, window_k]) -> [loss] + grads
_COMPILED: dict[tuple, object] = {}


def compiled_count() -> int:
    """How many functions this module has compiled (one per structure key)."""
    return len(_COMPILED)


class SymbolicGRU:
    """``loss`` and ``gradient`` of the GRU, by the backend's automatic differentiation.

    The gradient is truncated as ``config.truncate`` / ``config.truncation`` say,
    exactly as the NumPy reference's hand BPTT is.
    """

    name = "gru"

    def __init__(self, config: GRUConfig | None = None, backend: str = "pytensor", **kwargs):
        if config is not None and kwargs:
            raise TypeError(f"give either a config or GRUConfig fields, not both: {sorted(kwargs)}")
        self.config = config if config is not None else GRUConfig(**kwargs)
        if backend not in backends.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose pytensor or theano")
        self.backend = backend
        self.truncation = parse_truncation(self.config.truncate, self.config.truncation)
        self.reference = GRU(self.config)

    # ----------------------------------------------------------------- layout
    def param_specs(self) -> list[ParamSpec]:
        return self.reference.param_specs()

    @property
    def key(self) -> tuple:
        """The structure that decides the compiled graph (no sizes; no window k)."""
        c = self.config
        tr = self.truncation
        k = tr.k if tr.kind == "tail" else None      # window k is an input of the function
        return (c.layers, c.reset, c.update, c.gate, c.readout, c.embedding, tr.kind, k,
                self.backend)

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

        def update(z, n, h):
            # h' = (1 - z) n + z h (update "old"), or z n + (1 - z) h (update "new")
            k = z if c.update == "old" else 1.0 - z
            return (1.0 - k) * n + k * h

        def carry(m_t, h_new, h):
            mt = m_t.dimshuffle(0, "x")                                   # (B, 1)
            return mt * h_new + (1.0 - mt) * h

        def layer(l, inputs, mask, h0, truncate_gradient=-1):
            """Layer l over ``inputs`` (S, N, D_l) from h0 (N, H): states (S, N, H)."""
            W, U, b = params[f"W{l}"], params[f"U{l}"], params[f"b{l}"]
            xp = T.dot(inputs, W) + b                                     # (S, N, 3H)
            if c.reset == "before":
                step, non_seq = step_before, [U]
            else:
                step, non_seq = step_after, [U, params[f"bn{l}"]]
            return bk.scan(step, sequences=[mask, xp], outputs_info=[h0],
                           non_sequences=non_seq, truncate_gradient=truncate_gradient)

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
        states = []                                                       # per layer (T, B, H)
        h = x
        for l in range(c.layers):
            U = params[f"U{l}"]
            h0 = T.alloc(np.float64(0.0), B, U.shape[0])                  # (B, H)
            h = layer(l, h, m, h0, truncate_gradient)                     # (T, B, H)
            states.append(h)
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
        """Top states (T, B, H) recomputed, for every step t, over the window t - k .. t
        from the frozen states entering step t - k (see the module docstring)."""
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

        # specify_shape states known shapes, so that shape inference during grad
        # need not re-derive them through the scans (a third less compile time)
        mask = unfold(m)                                                  # (k + 1, T B)
        h = unfold(x)                                                     # (k + 1, T B, D)
        for l, hs in enumerate(states):
            H = params[f"U{l}"].shape[0]
            frozen = T.specify_shape(bk.disconnected_grad(hs), (steps, B, H))   # (T, B, H)
            # the state entering step t - k: h_{t-k-1}, zero when t - k <= 0
            zeros = T.zeros((span, B, H), dtype="float64")
            start = T.concatenate([zeros, frozen], axis=0)[:steps]        # (T, B, H)
            h = layer(l, h, mask, start.reshape((steps * B, H)))
            h = T.specify_shape(h, (span, steps * B, H))                  # (k + 1, T B, H)
        return h[-1].reshape((steps, B, H))                               # (T, B, H)
