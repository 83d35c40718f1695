"""Reference LSTM: forward pass and hand-written BPTT in NumPy.

Shapes are time-major: T steps, B sequences, D inputs, H hidden units,
K output classes, V vocabulary (token-id inputs).  Gate blocks are laid out
``i | f | o | c`` along the last axis of ``W``, ``U`` and ``b``, as in the
Theano LSTM tutorial.

Per layer l, with g the gate activation (logistic or hard sigmoid) and
m_t the mask::

    a_t  = x_t W + h_{t-1} U + b                 (B, 4H): blocks i | f | o | c
    i_t  = g(a_i),  f_t = g(a_f),  o_t = g(a_o)  input, forget and output gates
    u_t  = tanh(a_c)                             candidate cell state (c~)
    c'_t = f_t * c_{t-1} + i_t * u_t
    h'_t = o_t * tanh(c'_t)
    c_t  = m_t * c'_t + (1 - m_t) * c_{t-1}      masked steps carry both h and c over
    h_t  = m_t * h'_t + (1 - m_t) * h_{t-1}

with h_{-1} = c_{-1} = 0 and x_t the layer below's h_t for l > 0.  (The
tutorial takes tanh of the already masked c_t; for 0/1 masks that is the same
function.)  Readouts of the top layer's h_t, exactly the GRU's (see
:mod:`cells.stacked`); the readout bias is the parameter ``c``, the cell
state c_t is no parameter.

The state a layer carries from step to step, in the step interface and in
``gradient_details``'s ``state_adjoints``, is s_t = [h_t | c_t] (B, 2H).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cells.activations import GATES, tanh_grad_from_output
from cells.stacked import READOUTS, StackedCell, validate_config
from gradcheck.batch import Batch
from gradcheck.params import ParamSpec

__all__ = ["LSTMConfig", "LSTM", "READOUTS"]

GATE_BLOCKS = ("i", "f", "o", "c")


@dataclass(frozen=True)
class LSTMConfig:
    """Structure and sizes of an LSTM (everything but the sequence length and batch).

    input_size: D, the input (or embedding) width.
    hidden_size: H, the width of h and of c in every layer.
    layers: L, the number of stacked layers.
    classes: K, the readout's number of classes.
    vocab: V, the vocabulary size when ``embedding`` is set.
    gate: "sigmoid" or "hard" (clip(0.2 a + 0.5, 0, 1)) for i, f and o.
    readout: "lm" (per-step softmax) or "mean" (masked mean pooling, then softmax).
    embedding: inputs are token ids looked up in an embedding ``E`` (V, D).
    truncate: -1 for full BPTT, else k >= 1 steps (see gradcheck.truncation).
    truncation: "window" (BPTT(k), the seed blog) or "tail" (scan's truncate_gradient).
    """

    input_size: int = 4
    hidden_size: int = 5
    layers: int = 1
    classes: int = 3
    vocab: int = 7
    gate: str = "sigmoid"
    readout: str = "lm"
    embedding: bool = False
    truncate: int = -1
    truncation: str = "window"

    def __post_init__(self):
        validate_config(self, (("gate", tuple(GATES)), ("readout", READOUTS)))

    def as_dict(self) -> dict:
        return asdict(self)


class LSTM(StackedCell):
    """The reference LSTM: ``loss(params, batch)`` and ``gradient(params, batch)``."""

    name = "lstm"
    state_name = "[h|c]"        # the carried state, as sentences name it

    config_class = LSTMConfig
    gate_blocks = GATE_BLOCKS

    # -------------------------------------------------- one step, and its BPTT
    def _layer_step(self, l, params, s, xp_t, m_t):
        """s_t = [h_t | c_t] of layer l from s_{t-1} (..., B, 2H) and xp_t = x_t W + b (..., B, 4H).

        Leading axes are probes (see ``losses``): ``U`` may be (P, H, 4H).
        Returns s_t and what the step's backward needs.
        """
        H = self.config.hidden_size
        h, c = s[..., :H], s[..., H:]                           # h_{t-1}, c_{t-1} (B, H)
        a = xp_t + h @ params[f"U{l}"]                          # (B, 4H) i | f | o | c
        ifo = self.gate(a[..., :3 * H])                         # (B, 3H) gates
        i, f, o = ifo[..., :H], ifo[..., H:2 * H], ifo[..., 2 * H:]
        u = np.tanh(a[..., 3 * H:])                             # (B, H) candidate c~
        c_new = f * c + i * u
        tc = np.tanh(c_new)
        h_new = o * tc
        mt = m_t[:, None]                                       # (B, 1)
        s_new = np.concatenate([mt * h_new + (1.0 - mt) * h,
                                mt * c_new + (1.0 - mt) * c], axis=-1)
        return s_new, (a, ifo, u, tc, mt)

    def _layer_step_backward(self, l, params, ds, s, step_cache, grads=None):
        """BPTT of one step: dL/ds_t -> (dL/ds_{t-1}, dL/dxp_t).

        ds = [dL/dh_t | dL/dc_t] (B, 2H); s = s_{t-1} = [h_{t-1} | c_{t-1}].  The
        gradient of U is formed by ``_recurrent_grads`` from dL/dxp_t of all
        steps at once; ``grads`` is not used (it stays for wrapping subclasses).
        """
        H = self.config.hidden_size
        U = params[f"U{l}"]
        a, ifo, u, tc, mt = step_cache
        i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
        h, c = s[:, :H], s[:, H:]                               # h_{t-1}, c_{t-1}
        dh, dc = ds[:, :H], ds[:, H:]
        # h_t = m h'_t + (1 - m) h_{t-1},  c_t = m c'_t + (1 - m) c_{t-1}
        dh_new = mt * dh
        dc_new = mt * dc
        dh_prev = (1.0 - mt) * dh
        dc_prev = (1.0 - mt) * dc
        # h'_t = o * tanh(c'_t)
        do = dh_new * tc
        dc_new = dc_new + dh_new * o * tanh_grad_from_output(tc)
        # c'_t = f * c_{t-1} + i * u
        df = dc_new * c
        di = dc_new * u
        du = dc_new * i
        dc_prev += dc_new * f
        # u = tanh(a_c)
        da_c = du * tanh_grad_from_output(u)                    # (B, H)
        # i, f, o = g(a_i), g(a_f), g(a_o)
        gp = self.gate_grad(a[:, :3 * H], ifo)                  # (B, 3H)
        da_ifo = np.concatenate([di, df, do], axis=1) * gp      # (B, 3H)
        da = np.concatenate([da_ifo, da_c], axis=1)             # (B, 4H) i | f | o | c
        # a = x W + h_{t-1} U + b
        dh_prev += da @ U.T
        return np.concatenate([dh_prev, dc_prev], axis=1), da   # (B, 2H), (B, 4H)

    def _recurrent_grads(self, l, cache, dxp, steps, grads):
        """Add the gradient of U from dL/dxp_t of ``steps`` (a range), at once.

        a_t = x_t W + h_{t-1} U + b:   dU += sum_t h_{t-1}^T da_t
        """
        if not len(steps):                                      # an empty backward loop
            return
        H = self.config.hidden_size
        h = np.stack([self._previous_state(cache["ss"], t)[:, :H] for t in steps])   # (n, B, H)
        grads[f"U{l}"] += self._outer(h, dxp[steps.start:steps.stop])

    # ----------------------------------------------------- the step interface
    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        """s_{-1} = [h_{-1} | c_{-1}] = 0 (B, 2H) for every layer."""
        H = self.config.hidden_size
        return [np.zeros((batch_size, 2 * H)) for _ in range(self.config.layers)]

    def step(self, params, state, x_t, m_t) -> list[np.ndarray]:
        """One time step of every layer: ``state`` (list of (B, 2H) [h | c]) -> the next state."""
        H = self.config.hidden_size
        new = []
        for l, s in enumerate(state):
            xp_t = x_t @ params[f"W{l}"] + params[f"b{l}"]       # (B, 4H)
            s_t, _ = self._layer_step(l, params, s, xp_t, m_t)
            new.append(s_t)
            x_t = s_t[..., :H]                                  # h_t feeds the layer above
        return new

    def output(self, state) -> np.ndarray:
        """What the readout sees of a state: the top layer's h_t (B, H)."""
        return state[-1][..., :self.config.hidden_size]

    # ------------------------------------------------------- whole sequences
    def _layer_forward(self, l, params, x, mask, keep_steps=True):
        """Layer l over all steps: inputs x (..., T, B, D) -> h_t (..., T, B, H), and its cache.

        Leading axes are probes (see ``losses``); ``keep_steps`` keeps what the
        backward pass needs of every step.
        """
        H = self.config.hidden_size
        T, B = mask.shape
        xp = self._project(x, params[f"W{l}"], params[f"b{l}"])  # (..., T, B, 4H) all steps at once
        U = params[f"U{l}"]
        lead = np.broadcast_shapes(xp.shape[:-3], np.shape(U)[:-2])
        # ss[t + 1] = s_t = [h_t | c_t], ss[0] = s_{-1} = 0; complex under the complex step
        ss = np.zeros((T + 1,) + lead + (B, 2 * H), dtype=np.result_type(xp, U))
        steps, store = [], []
        for t in range(T):
            ss[t + 1], step_cache = self._layer_step(l, params, ss[t], xp[..., t, :, :], mask[t])
            if keep_steps:
                steps.append(self._keep_step(store, t, T, step_cache))
        return np.moveaxis(ss[1:, ..., :H], 0, -3), dict(x=x, ss=ss, steps=steps)

    def forward(self, params, batch: Batch):
        """Loss and the cache the backward pass needs."""
        x = self.embed(params, batch)                           # (T, B, D)
        layers = []
        for l in range(self.config.layers):
            x, layer_cache = self._layer_forward(l, params, x, batch.mask)   # h_t: input above
            layers.append(layer_cache)
        loss, rc = self._readout(params, x, batch)
        return loss, dict(layers=layers, top=x, readout=rc)

    @staticmethod
    def _previous_state(ss, t):
        """s_{t-1} = [h_{t-1} | c_{t-1}], the state entering step t; ``ss[0]`` is s_{-1} = 0."""
        return ss[t]

    def _backward_layers(self, params, cache, dtop, t_lo, t_hi, grads, batch, record=None):
        """BPTT of every layer through steps t_hi down to t_lo; ``dtop`` is dL/dh_t of the
        top layer.  The adjoint of the state entering step t_lo (h and c) is dropped
        (that state is frozen).  ``record``, when given, receives each step's parameter
        contributions and the adjoints of the carried states (see gradient_details)."""
        T, B = batch.mask.shape
        H = self.config.hidden_size
        top = self.config.layers - 1
        dabove = dtop                                           # dL/dh_t arriving from above
        span = slice(t_lo, t_hi + 1)
        for l in reversed(range(self.config.layers)):
            lc = cache["layers"][l]
            W = params[f"W{l}"]
            dxp = np.zeros((T, B, W.shape[1]))                  # dL/d(x_t W + b)
            carried = np.zeros((T, B, 2 * H))                   # dL/ds_t of the carried state
            ds_next = np.zeros((B, 2 * H))                      # dL/ds_t through step t + 1
            for t in range(t_hi, t_lo - 1, -1):
                # total dL/dh_t adds the use above (readout or next layer); c_t has no other use
                ds = np.concatenate([dabove[t] + ds_next[:, :H], ds_next[:, H:]], axis=1)
                # s_t feeds step t + 1 (and, on top, the readout at t); a lower layer's
                # h_t also feeds the layer above at t, which s_t excludes
                carried[t] = ds if l == top else ds_next
                s = self._previous_state(lc["ss"], t)           # s_{t-1}
                ds_next, dxp[t] = self._layer_step_backward(l, params, ds, s, lc["steps"][t],
                                                            grads)
            if record is None:
                self._recurrent_grads(l, lc, dxp, range(t_lo, t_hi + 1), grads)
            else:                                               # step by step, recorded
                for t in range(t_lo, t_hi + 1):
                    own = {f"U{l}": np.zeros_like(grads[f"U{l}"])}
                    self._recurrent_grads(l, lc, dxp, range(t, t + 1), own)
                    grads[f"U{l}"] += own[f"U{l}"]
                    record["steps"][f"U{l}"][t] = own[f"U{l}"]
            # xp = x W + b for the steps in the span
            grads[f"W{l}"] += self._outer(lc["x"][span], dxp[span])
            grads[f"b{l}"] += dxp[span].sum(axis=(0, 1))
            if record is not None:
                for t in range(t_lo, t_hi + 1):
                    record["steps"][f"W{l}"][t] = self._outer(lc["x"][t], dxp[t])
                    record["steps"][f"b{l}"][t] = dxp[t].sum(axis=0)
                record["adjoints"][l] = carried
            if l == 0 and not self.config.embedding:
                break                                           # dense inputs need no adjoint
            dabove = np.zeros(lc["x"].shape)
            dabove[span] = dxp[span] @ W.T                      # dL/dx_t of this layer
        if self.config.embedding:
            # x_t = E[ids_t]: scatter-add each step's input adjoint to its token's row
            np.add.at(grads["E"], batch.x[span], dabove[span])
            if record is not None:
                for t in range(t_lo, t_hi + 1):
                    np.add.at(record["steps"]["E"][t], batch.x[t], dabove[t])
