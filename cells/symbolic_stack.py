"""What the symbolic GRU and LSTM share: inputs, readout, truncation, compile cache.

A subclass gives its reference (NumPy) cell and config classes, the structure
fields that decide its graph (``_structure``), and one method,
``_layer(bk, params, l, inputs, mask, initial, truncate_gradient)``: one scan
of layer l over ``inputs`` (S, N, D_l) from the states ``initial`` (a list of
(N, H), h first) returning the state sequences as a list (S, N, H), h first.
Everything else -- the embedding, the readouts, the forward scans, the tail
and window truncations and the compiled-function cache -- is here; see
:mod:`cells.gru_symbolic` for how each truncation is realised.
"""

from __future__ import annotations

import numpy as np

from cells import backend as backends
from gradcheck.batch import Batch
from gradcheck.params import ParamSpec
from gradcheck.truncation import parse_truncation

__all__ = ["SymbolicStack"]


class SymbolicStack:
    """``loss`` and ``gradient`` of a stacked cell, by the backend's automatic differentiation.

    The gradient is truncated as ``config.truncate`` / ``config.truncation`` say,
    exactly as the NumPy reference's hand BPTT is.
    """

    reference_class: type = None
    config_class: type = None
    _compiled: dict = None              # structure key -> compiled function (per module)

    def __init__(self, config=None, backend: str = "pytensor", **kwargs):
        if config is not None and kwargs:
            raise TypeError(f"give either a config or {self.config_class.__name__} fields, "
                            f"not both: {sorted(kwargs)}")
        self.config = config if config is not None else self.config_class(**kwargs)
        if backend not in backends.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose pytensor or theano")
        self.backend = backend
        self.truncation = parse_truncation(self.config.truncate, self.config.truncation)
        self.reference = self.reference_class(self.config)

    # ----------------------------------------------------------------- layout
    def param_specs(self) -> list[ParamSpec]:
        return self.reference.param_specs()

    def _structure(self) -> tuple:
        """The config fields that decide the graph (not the sizes)."""
        raise NotImplementedError

    @property
    def key(self) -> tuple:
        """The structure that decides the compiled graph (no sizes; no window k)."""
        tr = self.truncation
        k = tr.k if tr.kind == "tail" else None      # window k is an input of the function
        return self._structure() + (tr.kind, k, self.backend)

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
    def _layer(self, bk, params, l, inputs, mask, initial, truncate_gradient=-1) -> list:
        raise NotImplementedError

    def _function(self):
        key = self.key
        if key not in self._compiled:
            self._compiled[key] = self._compile()
        return self._compiled[key]

    def _compile(self):
        bk = backends.load(self.backend)
        T = bk.tensor
        c = self.config
        tr = self.truncation

        specs = self.param_specs()
        params = {s.name: (T.dmatrix if len(s.shape) == 2 else T.dvector)(s.name) for s in specs}
        x_in = T.lmatrix("ids") if c.embedding else T.dtensor3("x")     # (T, B) or (T, B, D)
        y = T.lmatrix("y") if c.readout == "lm" else T.lvector("y")      # (T, B) or (B,)
        m = T.dmatrix("mask")                                             # (T, B)
        steps, B = m.shape[0], m.shape[1]
        if c.embedding:
            E = params["E"]
            x = E[x_in.flatten()].reshape((steps, B, E.shape[1]))        # (T, B, D)
        else:
            x = x_in

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
        states = []                                                       # per layer [h, ...]
        h = x
        for l in range(c.layers):
            zeros = T.alloc(np.float64(0.0), B, params[f"U{l}"].shape[0])  # (B, H)
            layer_states = self._layer(bk, params, l, h, m, [zeros] * self.state_count,
                                       truncate_gradient)                 # (T, B, H) each
            states.append(layer_states)
            h = layer_states[0]
        loss = readout_loss(h)

        inputs = [params[s.name] for s in specs] + [x_in, y, m]
        if tr.kind == "window":
            k = T.lscalar("window_k")
            inputs.append(k)
            surrogate = readout_loss(self._window_states(bk, params, k, x, m, states))
        else:
            surrogate = loss
        wrt = [params[s.name] for s in specs]
        grads = bk.grad(surrogate, wrt)
        return bk.function(inputs, [loss] + list(grads))

    def _window_states(self, bk, params, k, x, m, states):
        """Top states h (T, B, H) recomputed, for every step t, over the window t - k .. t
        from the frozen states entering step t - k (see cells.gru_symbolic)."""
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

        def entering(seq, H):
            """The frozen state entering step t - k, for every t: (T B, H), zero when t - k <= 0."""
            # specify_shape states known shapes, so that shape inference during grad
            # need not re-derive them through the scans (a third less compile time)
            frozen = T.specify_shape(bk.disconnected_grad(seq), (steps, B, H))   # (T, B, H)
            zeros = T.zeros((span, B, H), dtype="float64")
            start = T.concatenate([zeros, frozen], axis=0)[:steps]        # (T, B, H)
            return start.reshape((steps * B, H))

        mask = unfold(m)                                                  # (k + 1, T B)
        h = unfold(x)                                                     # (k + 1, T B, D)
        for l, layer_states in enumerate(states):
            H = params[f"U{l}"].shape[0]
            h = self._layer(bk, params, l, h, mask, [entering(s, H) for s in layer_states])[0]
            h = T.specify_shape(h, (span, steps * B, H))                  # (k + 1, T B, H)
        return h[-1].reshape((steps, B, H))                               # (T, B, H)
