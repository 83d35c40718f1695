"""Reference GRU: forward pass and hand-written BPTT in NumPy.

Shapes are time-major: T steps, B sequences, D inputs, H hidden units,
K output classes, V vocabulary (token-id inputs).  Gate blocks are laid out
``r | z | h`` along the last axis of ``W``, ``U`` and ``b``.

Per layer l, with g the gate activation (logistic or hard sigmoid) and
m_t the mask::

    r_t  = g(x_t W_r + h_{t-1} U_r + b_r)                    reset gate
    z_t  = g(x_t W_z + h_{t-1} U_z + b_z)                    update gate
    n_t  = tanh(x_t W_h + b_h + (r_t * h_{t-1}) U_h)         reset="before"
    n_t  = tanh(x_t W_h + b_h + r_t * (h_{t-1} U_h + bn))    reset="after"
    h'_t = (1 - z_t) * n_t + z_t * h_{t-1}                   update="old" (z keeps the old state)
    h'_t = z_t * n_t + (1 - z_t) * h_{t-1}                   update="new" (z takes the new one)
    h_t  = m_t * h'_t + (1 - m_t) * h_{t-1}                  masked steps carry over

with h_{-1} = 0 and x_t the layer below's h_t for l > 0.  Readouts of the top
layer's states:

    readout="lm":   L = (1/B) sum_{t,b} m_tb * CE(softmax(h_tb V + c), y_tb)
    readout="mean": p_b = sum_t m_tb h_tb / max(1, sum_t m_tb)
                    L = (1/B) sum_b CE(softmax(p_b V + c), y_b)

The step's gate arithmetic, after its two products, runs in compiled code
where the install built it (:mod:`cells.gate_kernels`): the same operations in
the same order, with NumPy's own exp and tanh, so the same numbers to the bit.

Only the layer step, its BPTT and the stacking are here; the data, embedding,
readouts and BPTT driver (``loss_and_gradient``, ``gradient_details``,
truncation) are shared with the LSTM in :mod:`cells.stacked`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cells import gate_kernels, workspace
from cells.activations import GATES, sigmoid_grad, sigmoid_in_loop, tanh_grad_from_output
from cells.stacked import READOUTS, StackedCell, add_into, multiply_into, validate_config
from gradcheck.batch import Batch
from gradcheck.params import ParamSpec

__all__ = ["GRUConfig", "GRU", "RESETS", "UPDATES", "READOUTS"]

RESETS = ("before", "after")
UPDATES = ("old", "new")
GATE_BLOCKS = ("r", "z", "h")
# the backward pass runs as a linear recursion, its coefficients computed for all steps
# at once, when the steps' gates take at most this many bytes (else rule by rule, step
# by step, in cache)
LINEAR_BYTES = 1 << 20


@dataclass(frozen=True)
class GRUConfig:
    """Structure and sizes of a GRU (everything but the sequence length and batch).

    input_size: D, the input (or embedding) width.
    hidden_size: H, the state width of every layer.
    layers: L, the number of stacked layers.
    classes: K, the readout's number of classes.
    vocab: V, the vocabulary size when ``embedding`` is set.
    reset: "before" (Cho et al. 2014) or "after" (cuDNN, torch.nn.GRU).
    update: "old": h' = (1 - z) n + z h (torch, cuDNN, the seed blog); "new":
        h' = z n + (1 - z) h (the seed question's Theano GRU).
    gate: "sigmoid" or "hard" (clip(0.2 a + 0.5, 0, 1)).
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
    reset: str = "before"
    gate: str = "sigmoid"
    readout: str = "lm"
    embedding: bool = False
    truncate: int = -1
    truncation: str = "window"
    update: str = "old"

    def __post_init__(self):
        validate_config(self, (("reset", RESETS), ("update", UPDATES), ("gate", tuple(GATES)),
                               ("readout", READOUTS)))

    def as_dict(self) -> dict:
        return asdict(self)


class GRU(StackedCell):
    """The reference GRU: ``loss(params, batch)`` and ``gradient(params, batch)``."""

    name = "gru"
    state_name = "h"            # the carried state, as sentences name it

    config_class = GRUConfig
    gate_blocks = GATE_BLOCKS

    def _extra_layer_specs(self, l) -> list[ParamSpec]:
        """reset="after" has the recurrent candidate's own bias bn (H,)."""
        if self.config.reset != "after":
            return []
        return [ParamSpec(f"bn{l}", (self.config.hidden_size,), ("h",), 0, layer=l)]

    # -------------------------------------------------- one step, and its BPTT
    def _layer_step(self, l, params, h, xp_t, m_t, out=None, blocks=None):
        """h_t of layer l from h = h_{t-1} (..., B, H) and xp_t = x_t W + b.

        xp_t: the pair ``(xp_rz, xp_h)``, x_t W + b of the gates r | z (..., B, 2H)
            and of the candidate (..., B, H); each block is kept contiguous, so
            that the gate arithmetic runs over contiguous arrays.
        m_t: the step's mask (B,), or None when every sequence is on (h_t = h'_t).
        out: None, or the arrays the step writes into, ``(a_rz, rz, n, q, h_t)`` of the
            full (..., B, width) shapes (see ``_step_arrays``; a_rz is None for
            sigmoid gates, q for reset "before"): the gates are computed in place
            there, with no per-step allocation and no copy into the backward cache.
        blocks: ``_recurrent_blocks(l, params)``, when the caller has it from before
            its time loop.

        Leading axes are probes (see ``losses``): ``U`` may be (P, H, 3H) and
        ``bn`` (P, 1, H).  Returns h_t and what the step's backward needs.
        """
        H = self.config.hidden_size
        U_rz, U_h, bn = blocks or self._recurrent_blocks(l, params)
        xp_rz, xp_h = xp_t
        a_out, rz_out, n_out, q_out, h_out = out or (None,) * 5
        # the sigmoid's slope needs its output only (a_rz is overwritten by it);
        # the hard sigmoid's needs a_rz itself
        keep_a = self.config.gate != "sigmoid"
        # a_{r|z} = x W_{r|z} + b_{r|z} + h U_{r|z}: one product for both gates
        a_rz = np.matmul(h, U_rz, out=a_out if keep_a else rz_out)
        # the compiled twin of the arithmetic below, where it runs (the same bits)
        kernels = gate_kernels.KERNELS
        a_rz, rz = self._gate_values(kernels, a_rz, xp_rz, rz_out, keep_a)   # g(x W + b + h U)
        r, z = rz[..., :H], rz[..., H:]
        if self.config.reset == "before":
            q = None
            n = np.matmul(r * h, U_h, out=n_out)                # (r h) U_h  (B, H)
        else:
            q = np.matmul(h, U_h, out=q_out)                    # h U_h + bn  (B, H)
        mt = None if m_t is None else m_t[:, None]              # (B, 1)
        a_kept = a_rz if keep_a else None
        if kernels is not None:
            n_k = n if q is None else (np.empty_like(q) if n_out is None else n_out)
            h_k = np.empty_like(n_k) if h_out is None else h_out
            if kernels.gru_candidate(rz, q, bn, xp_h, h, m_t, n_k, h_k,
                                     self.config.update == "old"):
                return h_k, (a_kept, rz, n_k, q, mt)
        if q is not None:
            q = add_into(q, bn)
            n = np.multiply(r, q, out=n_out)
        n = add_into(n, xp_h)
        np.tanh(n, out=n)                                       # n = tanh(a_h)
        # h' = (1 - z) n + z h = n + z (h - n) (update "old");  h' = h + z (n - h) ("new")
        if self.config.update == "old":
            h_new = add_into(multiply_into(np.subtract(h, n, out=h_out), z), n)
        else:
            h_new = add_into(multiply_into(np.subtract(n, h, out=h_out), z), h)
        if m_t is None:                                         # every sequence on: h_t = h'_t
            return h_new, (a_kept, rz, n, q, None)
        h_t = add_into(multiply_into(h_new, mt), (1.0 - mt) * h)   # m h' + (1 - m) h
        return h_t, (a_kept, rz, n, q, mt)

    def _probe_loop(self) -> bool:
        """The loop of ``_probe_steps`` takes a pass's steps for the reference step (not
        for a subclass that overrides the step, its blocks or its gates, nor for a cell
        given a gate function of its own), sigmoid gates and reset "after", with the
        kernels built."""
        return (gate_kernels.KERNELS is not None and self.gate is sigmoid_in_loop
                and self.config.reset == "after"
                and self._reference_kept(("_layer_step", "_recurrent_blocks", "_gate_values")))

    def _probe_steps(self, l, params, views, gates, candidate, out, on, mask, first, blocks,
                     bias=None) -> None:
        """``_layer_step``'s kernel path over steps ``first`` .. T - 1, without its Python
        around the four calls of each step (a vectorised pass runs ~6,000 steps a check):
        the same calls on the same arrays, so the same numbers.  With ``bias``, the
        kernels add b to x W as they read it, the sum ``_project`` would have made.  A
        step whose arrays a kernel refuses runs ``_layer_step`` itself.
        """
        kernels = gate_kernels.KERNELS
        U_rz, U_h, bn = blocks
        _, rz, n, q = out
        b_gates, b_candidate = bias if bias is not None else (None, None)
        old = self.config.update == "old"
        sigmoid_of_sum, gru_candidate = kernels.sigmoid_of_sum, kernels.gru_candidate
        matmul = np.matmul
        for t in range(first, len(on)):
            h, h_t = views[t], views[t + 1]
            m_t = None if on[t] else mask[t]
            matmul(h, U_rz, out=rz)                             # h U_{r|z}
            if sigmoid_of_sum(rz, gates[t], b_gates):           # [r | z] = sigma(x W + b + h U)
                matmul(h, U_h, out=q)                           # h U_h
                if gru_candidate(rz, q, bn, candidate[t], h, m_t, n, h_t, old, b_candidate):
                    continue
            xp_t = ((gates[t], candidate[t]) if bias is None
                    else (gates[t] + b_gates, candidate[t] + b_candidate))
            step_out = list(out) + [h_t]
            state, cache = self._layer_step(l, params, h, xp_t, m_t, out=step_out, blocks=blocks)
            self._written(step_out, cache[:len(out)] + (state,))

    def _recurrent_blocks(self, l, params):
        """``(U_{r|z}, U_h, bn)`` of layer l: the views of U its step multiplies by (bn None
        for reset "before")."""
        H = self.config.hidden_size
        U = params[f"U{l}"]                                     # (..., H, 3H) r | z | h
        return U[..., :2 * H], U[..., 2 * H:], params.get(f"bn{l}")

    def _gate_columns(self) -> int:
        """r | z: the first 2H columns of W, U and b."""
        return 2 * self.config.hidden_size

    def _state_width(self) -> int:
        """h_t: H."""
        return self.config.hidden_size

    def _step_arrays(self) -> list:
        """What ``_layer_step`` writes into: ``(a_rz, rz, n, q)`` (a_rz for hard gates only,
        q for reset "after" only)."""
        H = self.config.hidden_size
        return [("a_rz", 2 * H, self.config.gate != "sigmoid"), ("rz", 2 * H, True),
                ("n", H, True), ("q", H, self.config.reset == "after")]

    def _layer_step_backward(self, l, params, dh, h, step_cache, mt, out):
        """BPTT of one step, rule by rule: dL/dh_t -> dL/dh_{t-1}.

        dh: the total dL/dh_t (B, H); h: h_{t-1}; step_cache: ``_layer_step``'s.
        mt: the step's mask (B, 1) as ``_backward_mask`` gives it, or None (all on).
        out: ``(da, dq)``, the step's (B, 3H) rows to write dL/dxp_t and, for reset
            "after", dL/d(h_{t-1} U) = [da_r | da_z | r da_h] into (dq None for "before").

        Large layers run this step by step.  Small ones run the same chain rule as a
        linear recursion (``_step_coefficients``, ``_linear_step_backward``): fewer
        NumPy calls a step, the same gradient to rounding (a test holds them to it).
        The gradients of U (and bn) are formed by ``_recurrent_grads`` from dL/dxp_t
        of all steps at once.
        """
        H = self.config.hidden_size
        U = params[f"U{l}"]
        a_rz, rz, n, q, _ = step_cache
        r, z = rz[:, :H], rz[:, H:]
        da, dq = out
        # the compiled twin of the rules below (reset "after", sigmoid gates), where it
        # runs: the same bits; not for a subclass that changes a rule it would bypass
        kernels = gate_kernels.KERNELS if q is not None and self._backward_fusable() else None
        if kernels is not None:
            dh_prev = np.empty(dh.shape)
            if kernels.gru_backward_after(dh, None if mt is None else mt.reshape(-1), rz, n, q,
                                          h, da, dq, dh_prev, self.config.update == "old"):
                dh_prev += dq @ U.T
                return dh_prev
        # h_t = m h'_t + (1 - m) h_{t-1};  mt None: every sequence on, h_t = h'_t
        dh_new = dh if mt is None else mt * dh
        # h'_t = (1 - k) n + k h_{t-1},  k = z (update "old") or 1 - z (update "new")
        k, one_minus_k = (z, 1.0 - z) if self.config.update == "old" else (1.0 - z, z)
        gp, tg, h_minus_n = self._step_slopes(a_rz, rz, n, h)
        dh_prev = dh_new * k
        # dn = dh_new (1 - k), with 1 - k from z itself: dh_new - dh_prev cancels to 0
        # where the gate saturates (k rounds to 1)
        dn = dh_new * one_minus_k
        if mt is not None:
            dh_prev += (1.0 - mt) * dh
        dk = h_minus_n * dh_new                                 # dh_new (h - n)
        dz = dk if self.config.update == "old" else -dk
        # n = tanh(a_h):  da_h = (1 - n^2) dn
        da_h = np.multiply(tg, dn, out=da[:, 2 * H:])           # (B, H)
        # r = g(a_r), z = g(a_z);  a_r = x W_r + h U_r + b_r, likewise a_z;  gp = g'(a_rz)
        da[:, :H] = self._reset_gate_delta(da_h, h, q, U, gp[:, :H])
        np.multiply(dz, gp[:, H:], out=da[:, H:2 * H])          # da_z
        if q is None:
            # a_h = x W_h + b_h + (r * h) U_h
            dh_prev += self._candidate_state_adjoint(da_h, U[:, 2 * H:], r)
            dh_prev += da[:, :2 * H] @ U[:, :2 * H].T
        else:
            # a_h = x W_h + b_h + r * q,  q = h U_h + bn: dq = da_h * r, one product for r | z | h
            np.copyto(dq, da)
            dq[:, 2 * H:] *= r
            dh_prev += dq @ U.T
        return dh_prev                                          # (B, H)

    def _backward_fusable(self) -> bool:
        """Whether ``_layer_step_backward``'s rules are the reference's, as its compiled twin
        computes them: sigmoid gates, and no subclass override of a rule it reads."""
        return self.gate_grad is sigmoid_grad and self._reference_kept(
            ("_step_slopes", "_reset_gate_delta"), owner="_layer_step_backward")

    def _linear_step_backward(self, l, params, dh, coefficients, out):
        """``_layer_step_backward`` with the parts that do not depend on dL/dh
        computed beforehand for every step (``_step_coefficients``): the same rules.

        coefficients: this step's rows of ``_step_coefficients``' ``per_step``.
        out: ``(da, dq)`` as for ``_layer_step_backward``; for reset "after" only dq
            is written here (da after the steps, as ``c_h`` dh).

        reset "after" is linear in dh with per-step coefficients C::

            dq = [da_r | da_z | r da_h] = C * [dh | dh | dh]
            dh_{t-1} = direct * dh + dq U^T,     direct = m k + 1 - m

        reset "before", a_h = x W_h + b_h + (r * h_{t-1}) U_h, takes a product
        first, da_h U_h^T, then the reset gate (``_reset_gate_delta``,
        ``_candidate_state_adjoint``).
        """
        H = self.config.hidden_size
        U = params[f"U{l}"]
        da, dq = out
        if dq is not None:                                      # reset "after"
            direct, dq_per_dh = coefficients
            # [da_r | da_z | r da_h] = [g'_r q c_h | c_z | r c_h] dh   (B, 3, H)
            np.multiply(dq_per_dh, dh[:, None, :], out=dq.reshape(dq_per_dh.shape))
            dh_prev = dh * direct                               # through h'_t's k h_{t-1}, and m
            dh_prev += dq @ U.T                                 # through a_r, a_z and q = h U_h
            return dh_prev
        direct, c_h, c_z, slope_r, r, h = coefficients
        da_h = np.multiply(c_h, dh, out=da[:, 2 * H:])          # da_h = (1 - n^2) (1 - k) m dh
        da[:, :H] = self._reset_gate_delta(da_h, h, None, U, slope_r)
        np.multiply(c_z, dh, out=da[:, H:2 * H])                # da_z = g'(a_z) (+-(h - n)) m dh
        dh_prev = dh * direct
        dh_prev += self._candidate_state_adjoint(da_h, U[:, 2 * H:], r)
        dh_prev += da[:, :2 * H] @ U[:, :2 * H].T
        return dh_prev

    def _step_coefficients(self, lc, steps):
        """What the backward of ``steps`` (a range) needs that does not depend on dL/dh,
        for those steps at once: per step, dh_{t-1} = direct * dh + (...) U^T, and
        dL/dxp_t = c * dh blockwise (reset "after"; for "before", the z and h blocks,
        da_r coming from da_h U_h^T).  Returns ``(per_step, c_h)``: ``per_step`` the
        arrays whose step rows ``_linear_step_backward`` takes, ``(direct, dq_per_dh)``
        for reset "after" (dq_per_dh (n, B, 3, H): [g'_r q c_h | c_z | r c_h]) and
        ``(direct, c_h, c_z, g'_r, r, h_{t-1})`` for "before", each (n, B, H); ``c_h``
        (reset "after", else None) gives da_h = c_h dh after the steps.

        The chain rule, from the state back (dh' = m dh, dh the total dL/dh_t)::

            h'_t = (1 - k) n + k h_{t-1}:  dn = (1 - k) dh',  dk = (h_{t-1} - n) dh'
            n = tanh(a_h):                 da_h = (1 - n^2) dn          c_h = (1 - n^2)(1 - k) m
            k = z or 1 - z, z = g(a_z):    da_z = +-g'(a_z) dk          c_z = +-g'(a_z)(h_{t-1} - n) m
            reset "after", a_h = ... + r q:  dr = q da_h, dq_h = r da_h
            r = g(a_r):                    da_r = g'(a_r) dr
        """
        H = self.config.hidden_size
        span = slice(steps.start, steps.stop)
        a_rz = lc["a_rz"][span] if lc["a_rz"] is not None else None
        rz, n = lc["rz"][span], lc["n"][span]
        h = self._previous_states(lc["states"], steps)          # h_{t-1}  (n, B, H)
        gp, tg, h_minus_n = self._step_slopes(a_rz, rz, n, h)
        r, z = rz[..., :H], rz[..., H:]
        m = self._backward_mask(lc, steps)                      # (n, B, 1), or None: all on
        after = self.config.reset == "after"
        # reset "after": the coefficients of dq = [da_r | da_z | r da_h] side by side
        dq_per_dh = np.empty(tg.shape[:-1] + (3, H)) if after else None    # (n, B, 3, H)
        c_z = dq_per_dh[..., 1, :] if after else None
        if self.config.update == "old":                         # k = z
            direct = z
            c_h = np.multiply(tg, 1.0 - z, out=tg)              # c_h = (1 - n^2)(1 - k)
            c_z = np.multiply(gp[..., H:], h_minus_n, out=c_z)  # dk/dz = 1
        else:                                                   # k = 1 - z
            direct = 1.0 - z
            c_h = np.multiply(tg, z, out=tg)
            c_z = np.multiply(gp[..., H:], np.negative(h_minus_n, out=h_minus_n), out=c_z)
        if m is not None:
            direct = m * direct + (1.0 - m)                     # m k + 1 - m
            c_h *= m
            c_z *= m
        if not after:
            return (direct, c_h, c_z, gp[..., :H], r, h), None
        c_r = np.multiply(gp[..., :H], lc["q"][span], out=dq_per_dh[..., 0, :])
        c_r *= c_h                                              # da_r = g'(a_r) q da_h
        np.multiply(r, c_h, out=dq_per_dh[..., 2, :])           # dq_h = r da_h
        return (direct, dq_per_dh), c_h

    def _backward_mask(self, lc, steps):
        """m_t of ``steps`` as (n, B, 1) for the backward pass, or None when every
        sequence is on in every one of them (h_t = h'_t)."""
        mask = lc["mask"][steps.start:steps.stop]
        return None if mask.all() else mask[..., None]

    def _step_slopes(self, a_rz, rz, n, h):
        """What a step's backward needs that does not depend on dL/dh: the gate slopes
        g'(a_rz) (..., B, 2H), the candidate's 1 - n^2 and h_{t-1} - n (..., B, H).
        One step's arrays, or all steps' stacked along a leading axis; new arrays,
        which ``_step_coefficients`` overwrites."""
        return self.gate_grad(a_rz, rz), tanh_grad_from_output(n), h - n

    def _recurrent_grads(self, l, cache, dxp, dq, steps, grads):
        """Add the gradients of U (and bn) from dL/dxp_t of ``steps`` (a range), at once.

        dq: (T, B, 3H), ``_layer_step_backward``'s [da_r | da_z | r da_h] of every step
            (reset "after"; None for "before").

        a_{r,z} = x W + h_{t-1} U_{r,z} + b:     dU_{r,z} += sum_t h_{t-1}^T da_{r,z}
        reset "before", a_h = ... + (r h_{t-1}) U_h:  dU_h += sum_t (r h_{t-1})^T da_h
        reset "after",  a_h = ... + r q, q = h_{t-1} U_h + bn, dq = r da_h:
                                                  dU_h += sum_t h_{t-1}^T dq,  dbn += sum_t dq
        """
        if not len(steps):                                      # an empty backward loop
            return
        H = self.config.hidden_size
        span = slice(steps.start, steps.stop)
        h = self._previous_states(cache["states"], steps)           # (n, B, H)
        dU = grads[f"U{l}"]
        if self.config.reset == "before":
            da = dxp[span]                                      # (n, B, 3H)
            r = cache["rz"][span, :, :H]
            dU[:, :2 * H] += self._recurrent_outer(h, da[..., :2 * H])
            dU[:, 2 * H:] += self._recurrent_outer(r * h, da[..., 2 * H:])
        else:
            dU += self._recurrent_outer(h, dq[span])            # one product for r | z | h
            grads[f"bn{l}"] += dq[span, :, 2 * H:].sum(axis=(0, 1))

    def _recurrent_outer(self, h, d):
        """sum_t h_t^T d_t for U's gradient: (n, B, H), (n, B, G) -> (H, G), gate blocks
        side by side (a method, so that a broken variant can get one block wrong)."""
        return self._outer(h, d)

    @staticmethod
    def _candidate_state_adjoint(da_h, U_h, r):
        """dL/dh_{t-1} through the candidate, reset "before": a_h = ... + (r * h_{t-1}) U_h,
        so (da_h U_h^T) * r: the product first, then the reset gate."""
        return (da_h @ U_h.T) * r

    def _reset_gate_delta(self, da_h, h, q, U, slope_r):
        """dL/da_r: through n's pre-activation a_h, times the reset gate's slope.

        reset "before": a_h contains (r * h) U_h, so dL/dr = (da_h U_h^T) * h;
        reset "after":  a_h contains r * q,       so dL/dr = da_h * q.
        """
        H = self.config.hidden_size
        dr = (da_h @ U[:, 2 * H:].T) * h if q is None else da_h * q
        return dr * slope_r

    # ----------------------------------------------------- the step interface
    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        """h_{-1} = 0 for every layer."""
        return [np.zeros((batch_size, self.config.hidden_size)) for _ in range(self.config.layers)]

    def step(self, params, state, x_t, m_t) -> list[np.ndarray]:
        """One time step of every layer: ``state`` (list of (B, H)) -> the next state."""
        H2 = 2 * self.config.hidden_size
        new = []
        with np.errstate(over="ignore"):                        # for the gates' exp (LOOP_GATES)
            for l, h in enumerate(state):
                xp_t = x_t @ params[f"W{l}"] + params[f"b{l}"]   # (..., B, 3H)
                h_t, _ = self._layer_step(l, params, h, (xp_t[..., :H2], xp_t[..., H2:]), m_t)
                new.append(h_t)
                x_t = h_t
        return new

    @staticmethod
    def output(state) -> np.ndarray:
        """What the readout sees of a state: the top layer's h_t (B, H)."""
        return state[-1]

    # ------------------------------------------------------- whole sequences
    def forward(self, params, batch: Batch):
        """Loss and the cache the backward pass needs."""
        x = self.embed(params, batch)                           # (T, B, D)
        layers = []
        for l in range(self.config.layers):
            # h_t of layer l: the input of the layer above
            x, layer_cache = self._layer_forward(l, params, x, batch.mask)
            layers.append(layer_cache)
        loss, rc = self._readout(params, x, batch)
        return loss, dict(layers=layers, top=x, readout=rc)

    @staticmethod
    def _adjoint_for_layer_below(dx, dtop):
        """What layer l passes down as dL/dh_t of layer l - 1: its own input adjoint dx."""
        return dx

    @staticmethod
    def _embedding_rows(batch, span, t_loss):
        """The embedding rows that receive steps ``span``'s input adjoints: their own words."""
        return batch.x[span]

    def _backward_layers(self, params, cache, dtop, t_lo, t_hi, grads, batch, record=None):
        """BPTT of every layer through steps t_hi down to t_lo; ``dtop`` is dL/dh_t of the
        top layer.  The adjoint of the state entering step t_lo is dropped (that state
        is frozen).  ``record``, when given, receives each step's parameter
        contributions and the adjoints of the carried states (see gradient_details)."""
        T, B = batch.mask.shape
        H = self.config.hidden_size
        top = self.config.layers - 1
        dabove = dtop                                           # dL/dh_t arriving from above
        span = slice(t_lo, t_hi + 1)
        for l in reversed(range(self.config.layers)):
            lc = cache["layers"][l]
            W = params[f"W{l}"]
            ws = workspace.active()                             # reused arrays, or fresh ones
            dxp = ws.empty(("dxp", l), (T, B, W.shape[1]))      # dL/d(x_t W + b), of the span's steps
            # dL/d(h_{t-1} U) for U's gradient (reset "after")
            dq = ws.empty(("dq", l), dxp.shape) if self.config.reset == "after" else None
            # the total dL/dh_t of the span's steps (the loop writes it; 0 elsewhere when
            # recorded: the adjoints of the states before the span)
            dh_all = (ws.empty if record is None else ws.zeros)(("dh", l), (T, B, H))
            dh_next = 0.0                                       # dL/dh_t through step t + 1
            # small layers: the linear recursion, its coefficients for every step in the
            # span at once (fewer calls); large ones rule by rule, step by step, while the
            # step's arrays are in cache (the coefficients cost more passes over memory)
            steps = range(t_lo, t_hi + 1)
            linear = lc["rz"][span].nbytes <= LINEAR_BYTES
            if linear:
                per_step, c_h = self._step_coefficients(lc, steps)
                rows = list(zip(*per_step))                     # each step's views, made once
            dxp_rows, dh_rows = list(dxp), list(dh_all)         # each step's rows, made once
            dq_rows = [None] * T if dq is None else list(dq)
            for t in reversed(steps):
                dh = np.add(dabove[t], dh_next, out=dh_rows[t])     # total dL/dh_t
                out = (dxp_rows[t], dq_rows[t])
                if linear:
                    dh_next = self._linear_step_backward(l, params, dh, rows[t - t_lo], out)
                    continue
                m = self._backward_mask(lc, range(t, t + 1))
                dh_next = self._layer_step_backward(l, params, dh,
                                                    self._previous_state(lc["states"], t),
                                                    lc["steps"][t], None if m is None else m[0],
                                                    out)
            if linear and dq is not None:
                # dL/dxp_t = [da_r | da_z | da_h]: dq's r and z blocks, and da_h = c_h dh
                dxp[span, :, :2 * H] = dq[span, :, :2 * H]
                np.multiply(c_h, dh_all[span], out=dxp[span, :, 2 * H:])
            if record is None:
                self._recurrent_grads(l, lc, dxp, dq, range(t_lo, t_hi + 1), grads)
            else:                                               # step by step, recorded
                for t in range(t_lo, t_hi + 1):
                    own = {k: np.zeros_like(grads[k]) for k in (f"U{l}", f"bn{l}") if k in grads}
                    self._recurrent_grads(l, lc, dxp, dq, range(t, t + 1), own)
                    for k, v in own.items():
                        grads[k] += v
                        record["steps"][k][t] = v
            # xp = x W + b for the steps in the span
            grads[f"W{l}"] += self._outer(lc["x"][span], dxp[span])
            grads[f"b{l}"] += dxp[span].sum(axis=(0, 1))
            if record is not None:
                for t in range(t_lo, t_hi + 1):
                    record["steps"][f"W{l}"][t] = self._outer(lc["x"][t], dxp[t])
                    record["steps"][f"b{l}"][t] = dxp[t].sum(axis=0)
                # the carried state s_t feeds step t + 1 (and, on top, the readout at t);
                # a lower layer's h_t also feeds the layer above at t, which s_t excludes
                record["adjoints"][l] = dh_all - (dabove if l < top else 0.0)
            if l == 0 and not self.config.embedding:
                break                                           # dense inputs need no adjoint
            dx = dxp[span] @ W.T                                # dL/dx_t of this layer
            dabove = np.zeros(lc["x"].shape)
            dabove[span] = self._adjoint_for_layer_below(dx, dtop[span]) if l > 0 else dx
        if self.config.embedding:
            # x_t = E[ids_t]: scatter-add each step's input adjoint to its token's row
            rows = self._embedding_rows(batch, span, t_hi)
            np.add.at(grads["E"], rows, dabove[span])
            if record is not None:
                for t in range(t_lo, t_hi + 1):
                    np.add.at(record["steps"]["E"][t], rows[t - t_lo], dabove[t])
