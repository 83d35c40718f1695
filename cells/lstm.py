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

The step's gate arithmetic, after its two products, runs in compiled code
where the install built it (:mod:`cells.gate_kernels`): the same operations in
the same order, with NumPy's own exp and tanh, so the same numbers to the bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cells import gate_kernels, workspace
from cells.activations import GATES, tanh_grad_from_output
from cells.stacked import READOUTS, StackedCell, add_into, validate_config
from gradcheck.batch import Batch

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
    def _layer_step(self, l, params, s, xp_t, m_t, out=None, blocks=None):
        """s_t = [h_t | c_t] of layer l from s_{t-1} (..., B, 2H) and xp_t = x_t W + b.

        xp_t: the pair ``(xp_ifo, xp_c)``, x_t W + b of the gates i | f | o (..., B, 3H)
            and of the candidate (..., B, H); each block is kept contiguous, so that
            the gate arithmetic runs over contiguous arrays.
        m_t: the step's mask (B,), or None when every sequence is on (s_t = s'_t).
        out: None, or the arrays the step writes into, ``(a_ifo, ifo, u, tc, s_t)`` of
            the full (..., B, width) shapes (see ``_step_arrays``; a_ifo is None for
            sigmoid gates): the gates are computed in place there, with no per-step
            allocation and no copy into the backward cache.
        blocks: ``_recurrent_blocks(l, params)``, when the caller has it from before
            its time loop.

        Leading axes are probes (see ``losses``): ``U`` may be (P, H, 4H).
        Returns s_t and what the step's backward needs, ``(a_ifo, ifo, u, tc, mt)``:
        the gates' pre-activations (hard gates only), the gates, the candidate,
        tanh(c'_t) and the mask column.
        """
        H = self.config.hidden_size
        U_ifo, U_c = blocks or self._recurrent_blocks(l, params)
        xp_ifo, xp_c = xp_t
        a_out, ifo_out, u_out, tc_out, s_out = out or (None,) * 5
        h, c = s[..., :H], s[..., H:]                           # h_{t-1}, c_{t-1} (B, H)
        # the sigmoid's slope needs its output only (a_ifo is overwritten by it); the
        # hard sigmoid's needs a_ifo itself
        keep_a = self.config.gate != "sigmoid"
        # a = x W + b + h U: the gates i | f | o, then the candidate's block c
        a_ifo = np.matmul(h, U_ifo, out=a_out if keep_a else ifo_out)
        # the compiled twin of the arithmetic below, where it runs (the same bits)
        kernels = gate_kernels.KERNELS
        a_ifo, ifo = self._gate_values(kernels, a_ifo, xp_ifo, ifo_out, keep_a)   # g(x W + b + h U)
        i, f, o = ifo[..., :H], ifo[..., H:2 * H], ifo[..., 2 * H:]
        u = np.matmul(h, U_c, out=u_out)                        # h U_c (B, H)
        mt = None if m_t is None else m_t[:, None]              # (B, 1)
        a_kept = a_ifo if keep_a else None
        if kernels is not None:
            tc_k = np.empty_like(u) if tc_out is None else tc_out
            s_k = np.empty(u.shape[:-1] + (2 * H,)) if s_out is None else s_out
            if kernels.lstm_candidate(ifo, u, xp_c, s, m_t, tc_k, s_k):
                return s_k, (a_kept, ifo, u, tc_k, mt)
        u = add_into(u, xp_c)                                   # a_c (B, H)
        np.tanh(u, out=u)                                       # u = tanh(a_c), candidate c~
        if s_out is None:
            s_out = np.empty(np.broadcast_shapes(u.shape[:-1] + (2 * H,), s.shape), u.dtype)
        # c'_t = f * c_{t-1} + i * u
        c_new = np.multiply(f, c, out=s_out[..., H:])
        tc = np.multiply(i, u, out=tc_out)                      # i u; then tanh(c'_t), in place
        c_new += tc
        np.tanh(c_new, out=tc)                                  # (B, H)
        # h'_t = o * tanh(c'_t)
        np.multiply(o, tc, out=s_out[..., :H])
        if m_t is None:                                         # every sequence on: s_t = s'_t
            return s_out, (a_kept, ifo, u, tc, None)
        # masked steps carry both h and c over: s_t = m s'_t + (1 - m) s_{t-1}
        s_out *= mt
        s_out += (1.0 - mt) * s
        return s_out, (a_kept, ifo, u, tc, mt)

    def _recurrent_blocks(self, l, params):
        """``(U_{i|f|o}, U_c)`` of layer l: the views of U its step multiplies by."""
        H = self.config.hidden_size
        U = params[f"U{l}"]                                     # (..., H, 4H) i | f | o | c
        return U[..., :3 * H], U[..., 3 * H:]

    def _gate_columns(self) -> int:
        """i | f | o: the first 3H columns of W, U and b."""
        return 3 * self.config.hidden_size

    def _state_width(self) -> int:
        """s_t = [h_t | c_t]: 2H."""
        return 2 * self.config.hidden_size

    def _step_arrays(self) -> list:
        """What ``_layer_step`` writes into: ``(a_ifo, ifo, u, tc)`` (a_ifo for hard gates
        only)."""
        H = self.config.hidden_size
        return [("a_ifo", 3 * H, self.config.gate != "sigmoid"), ("ifo", 3 * H, True),
                ("u", H, True), ("tc", H, True)]

    def _layer_step_backward(self, l, params, ds, s, step_cache, grads=None, out=None):
        """BPTT of one step: dL/ds_t -> (dL/ds_{t-1}, dL/dxp_t).

        ds = [dL/dh_t | dL/dc_t] (B, 2H); s = s_{t-1} = [h_{t-1} | c_{t-1}].
        out: None, or a (B, 4H) array (a row of the layer's array) to write dL/dxp_t into.

        The gradient of U is formed by ``_recurrent_grads`` from dL/dxp_t of all
        steps at once; ``grads`` is not used (it stays for wrapping subclasses).
        """
        H = self.config.hidden_size
        U = params[f"U{l}"]
        a_ifo, ifo, u, tc, mt = step_cache
        i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
        c = s[:, H:]                                            # c_{t-1}
        dh, dc = ds[:, :H], ds[:, H:]
        da = np.empty(dh.shape[:-1] + (4 * H,)) if out is None else out
        da_i, da_f, da_o, da_c = (da[:, k * H:(k + 1) * H] for k in range(4))
        # h_t = m h'_t + (1 - m) h_{t-1},  c_t = m c'_t + (1 - m) c_{t-1};  mt None: m = 1
        dh_new = dh if mt is None else mt * dh
        dc_new = dc if mt is None else mt * dc
        # h'_t = o * tanh(c'_t)
        np.multiply(dh_new, tc, out=da_o)                       # do
        d = self._cell_tanh_slope(tc)                           # dc' = dc + dh' o (1 - tanh^2 c')
        d *= o
        d *= dh_new
        dc_new = add_into(d, dc_new)
        # c'_t = f * c_{t-1} + i * u
        np.multiply(dc_new, u, out=da_i)                        # di
        np.multiply(dc_new, c, out=da_f)                        # df
        # u = tanh(a_c):  da_c = du (1 - u^2),  du = dc' i
        np.multiply(dc_new, i, out=da_c)
        da_c *= tanh_grad_from_output(u)                        # (B, H)
        # i, f, o = g(a_i), g(a_f), g(a_o)
        da[:, :3 * H] *= self.gate_grad(a_ifo, ifo)
        ds_prev = np.empty(ds.shape)                            # (B, 2H)
        ds_prev[:, H:] = self._cell_carry(dc_new, f)            # dc_{t-1} = dc' f
        # a = x W + h_{t-1} U + b:  dh_{t-1} = da U^T
        np.matmul(da, U.T, out=ds_prev[:, :H])
        if mt is not None:
            ds_prev += (1.0 - mt) * ds
        return ds_prev, da                                      # (B, 2H), (B, 4H)

    @staticmethod
    def _cell_tanh_slope(tc):
        """d tanh(c') / dc' = 1 - tanh(c')^2, from tc = tanh(c') (a method, so that a broken
        variant can take it from c' itself)."""
        return tanh_grad_from_output(tc)

    @staticmethod
    def _cell_carry(dc_new, f):
        """dL/dc_{t-1} through c'_t = f * c_{t-1} + i * u: dc' * f (a method, so that a broken
        variant can leave the forget gate out)."""
        return dc_new * f

    def _recurrent_grads(self, l, cache, dxp, steps, grads):
        """Add the gradient of U from dL/dxp_t of ``steps`` (a range), at once.

        a_t = x_t W + h_{t-1} U + b:   dU += sum_t h_{t-1}^T da_t
        """
        if not len(steps):                                      # an empty backward loop
            return
        H = self.config.hidden_size
        h = self._previous_states(cache["states"], steps)[..., :H]  # (n, B, H)
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
        with np.errstate(over="ignore"):                        # for the gates' exp (LOOP_GATES)
            for l, s in enumerate(state):
                xp_t = x_t @ params[f"W{l}"] + params[f"b{l}"]   # (..., B, 4H)
                s_t, _ = self._layer_step(l, params, s, (xp_t[..., :3 * H], xp_t[..., 3 * H:]),
                                          m_t)
                new.append(s_t)
                x_t = s_t[..., :H]                              # h_t feeds the layer above
        return new

    def output(self, state) -> np.ndarray:
        """What the readout sees of a state: the top layer's h_t (B, H)."""
        return state[-1][..., :self.config.hidden_size]

    # ------------------------------------------------------- whole sequences
    def forward(self, params, batch: Batch):
        """Loss and the cache the backward pass needs."""
        x = self.embed(params, batch)                           # (T, B, D)
        layers = []
        for l in range(self.config.layers):
            x, layer_cache = self._layer_forward(l, params, x, batch.mask)   # h_t: input above
            layers.append(layer_cache)
        loss, rc = self._readout(params, x, batch)
        return loss, dict(layers=layers, top=x, readout=rc)

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
            dxp = workspace.active().zeros(("dxp", l), (T, B, W.shape[1]))   # dL/d(x_t W + b)
            carried = np.zeros((T, B, 2 * H)) if record is not None else None
            ds = np.zeros((B, 2 * H))                           # dL/ds_t through step t + 1
            for t in range(t_hi, t_lo - 1, -1):
                # s_t feeds step t + 1 (and, on top, the readout at t); a lower layer's
                # h_t also feeds the layer above at t, which s_t excludes
                if record is not None and l != top:
                    carried[t] = ds
                # total dL/dh_t adds the use above (readout or next layer); c_t has no other use
                ds[:, :H] += dabove[t]
                if record is not None and l == top:
                    carried[t] = ds
                s = self._previous_state(lc["states"], t)           # s_{t-1}
                row = dxp[t]
                ds, da = self._layer_step_backward(l, params, ds, s, lc["steps"][t], grads,
                                                   out=row)
                if da is not row:                               # a step that wrote elsewhere
                    row[...] = da
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
