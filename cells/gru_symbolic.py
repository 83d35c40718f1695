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
as non-sequences.  ``truncate_gradient`` is handed to every layer's scan
(-1 = full BPTT).

Parameters, inputs, targets and mask are all inputs of the compiled function,
and no size is baked into the graph, so one function per structure
``(layers, reset, gate, readout, embedding, truncate_gradient, backend)``
serves every size T, B, D, H, K, V and every parameter value.  Functions are
compiled on first use and kept in the module-level ``_COMPILED``.
"""

from __future__ import annotations

import numpy as np

from cells import backend as backends
from cells.gru import GRU, GRUConfig
from gradcheck.batch import Batch
from gradcheck.params import ParamSpec

__all__ = ["SymbolicGRU", "compiled_count"]

# structure key -> compiled function(*params, x, y, mask) -> [loss] + grads
_COMPILED: dict[tuple, object] = {}


def compiled_count() -> int:
    """How many functions this module has compiled (one per structure key)."""
    return len(_COMPILED)


class SymbolicGRU:
    """``loss`` and ``gradient`` of the GRU, by the backend's automatic differentiation."""

    name = "gru"

    def __init__(self, config: GRUConfig | None = None, backend: str = "pytensor", *,
                 truncate_gradient: int = -1, **kwargs):
        self.config = config if config is not None else GRUConfig(**kwargs)
        if backend not in backends.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose pytensor or theano")
        if isinstance(truncate_gradient, bool) or not isinstance(truncate_gradient, (int, np.integer)) \
                or (truncate_gradient < 1 and truncate_gradient != -1):
            raise ValueError(f"truncate_gradient={truncate_gradient!r} must be -1 or a positive integer")
        self.backend = backend
        self.truncate_gradient = int(truncate_gradient)
        self.reference = GRU(self.config)

    # ----------------------------------------------------------------- layout
    def param_specs(self) -> list[ParamSpec]:
        return self.reference.param_specs()

    @property
    def key(self) -> tuple:
        """The structure that decides the compiled graph (no sizes)."""
        c = self.config
        return (c.layers, c.reset, c.gate, c.readout, c.embedding,
                self.truncate_gradient, self.backend)

    # ------------------------------------------------------------ evaluation
    def loss_and_gradient(self, params, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
        self.reference.check_inputs(params, batch)
        specs = self.param_specs()
        x = np.asarray(batch.x)
        x = x.astype(np.int64) if self.config.embedding else x.astype(np.float64)
        args = [np.asarray(params[s.name], dtype=np.float64) for s in specs]
        args += [x, np.asarray(batch.y, dtype=np.int64), np.asarray(batch.mask, dtype=np.float64)]
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
            return carry(m_t, (1.0 - z) * n + z * h, h)

        def step_after(m_t, xp_t, h, U, bn):
            H = U.shape[0]
            rz = gate(xp_t[:, :2 * H] + T.dot(h, U[:, :2 * H]))           # (B, 2H) r | z
            r, z = rz[:, :H], rz[:, H:]
            q = T.dot(h, U[:, 2 * H:]) + bn                               # (B, H)
            n = T.tanh(xp_t[:, 2 * H:] + r * q)                           # (B, H)
            return carry(m_t, (1.0 - z) * n + z * h, h)

        def carry(m_t, h_new, h):
            mt = m_t.dimshuffle(0, "x")                                   # (B, 1)
            return mt * h_new + (1.0 - mt) * h

        for l in range(c.layers):
            W, U, b = params[f"W{l}"], params[f"U{l}"], params[f"b{l}"]
            xp = T.dot(x, W) + b                                          # (T, B, 3H)
            h0 = T.alloc(np.float64(0.0), B, U.shape[0])                  # (B, H)
            if c.reset == "before":
                step, non_seq = step_before, [U]
            else:
                step, non_seq = step_after, [U, params[f"bn{l}"]]
            x = bk.scan(step, sequences=[m, xp], outputs_info=[h0],      # (T, B, H)
                        non_sequences=non_seq, truncate_gradient=self.truncate_gradient)

        V, cb = params["V"], params["c"]
        Bf = T.cast(B, "float64")
        if c.readout == "lm":
            logp = bk.log_softmax(T.dot(x, V) + cb)                       # (T, B, K)
            flat = logp.reshape((steps * B, logp.shape[2]))               # (T B, K)
            nll = -flat[T.arange(steps * B), y.flatten()]                 # (T B,)
            loss = T.sum(m.flatten() * nll) / Bf
        else:
            count = T.maximum(m.sum(axis=0), 1.0)                         # (B,)
            pooled = (m.dimshuffle(0, 1, "x") * x).sum(axis=0) \
                / count.dimshuffle(0, "x")                                # (B, H)
            logp = bk.log_softmax(T.dot(pooled, V) + cb)                  # (B, K)
            loss = -T.sum(logp[T.arange(B), y]) / Bf

        wrt = [params[s.name] for s in specs]
        grads = bk.grad(loss, wrt)
        return bk.function(wrt + [x_in, y, m], [loss] + list(grads))
