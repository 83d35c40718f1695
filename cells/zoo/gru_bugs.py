"""Deliberately BROKEN GRUs: each has one real derivation bug in its backward pass.

They are test material, never reference cells: every check in the toolkit must
be shown to fail on them.  Each class changes one small piece of the
reference GRU's hand BPTT and keeps its forward pass, so the numeric and
autodiff oracles still see the true gradient.

The classes marked "blog" put back a bug of the seed blog's NumPy BPTT
(``003_*.txt``), translated from its column-vector notation (``W.dot(s)``)
into the reference GRU's row-vector one (``h @ U``).  ``SEED_BLOG_BUGS`` lists
them in the blog's order.

A bug that only some configurations or data exercise has a ``dormant(batch)``
method: the reason it cannot change the gradient on ``batch`` (with the options
that would wake it), or None; ``gradcheck.runner.check_builtin`` refuses to
check a dormant bug.
"""

from __future__ import annotations

import numpy as np

from cells.activations import hard_sigmoid_grad
from cells.gru import GRU
from cells.zoo.truncation_bugs import OffByOneWindow

__all__ = ["BROKEN_GRUS", "SEED_BLOG_BUGS", "ResetGateMissingDerivativeGRU",
           "WrappedTimeIndexGRU", "ElementwiseProductGRU", "OffByOneWindowGRU",
           "MaskIgnoredInBackwardGRU", "BlogResetDeltaGRU", "BlogStateAdjointOrderGRU",
           "BlogOutputDeltaEveryLayerGRU",
           "BlogHardSigmoidSlopeGRU", "BlogEmbeddingWordGRU", "BlogEmptyLoopGRU",
           "BlogOutputMutatedGRU"]


class ResetGateMissingDerivativeGRU(GRU):
    """Wrong gate derivative: the reset-gate delta lacks sigma'(a_r).

    Correct: da_r = dr * sigma'(a_r).  Broken: da_r = dr.
    Wrong parameters: block r of every W, U and b; everything below layer L-1.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        H, true_grad = self.config.hidden_size, self.gate_grad

        def gate_grad(a, g):
            d = true_grad(a, g)
            d[..., :H] = 1.0            # the bug: the reset gate's slope is dropped
            return d
        self.gate_grad = gate_grad


class WrappedTimeIndexGRU(GRU):
    """Wrong time index (blog): the state before step t is read as s[t-1], which at t = 0
    wraps to the last step's state instead of the zero initial state.

    Wrong parameters: U (every block) at step 0.
    """

    @staticmethod
    def _previous_state(hs, t):
        states = hs[1:]                 # states[t] = h_t
        return states[t - 1]            # the bug: t = 0 gives states[-1] = h_{T-1}

    def _previous_states(self, hs, steps):
        return np.stack([self._previous_state(hs, t) for t in steps])


class ElementwiseProductGRU(GRU):
    """Wrong product (blog): a square weight gradient accumulated with an elementwise
    product where an outer product belongs (``dU += delta * s`` in the blog).

    Wrong parameters: every H x H block of U (and any square W).
    """

    @staticmethod
    def _outer(x, d):
        x2 = x.reshape(-1, x.shape[-1])
        d2 = d.reshape(-1, d.shape[-1])
        if x2.shape[1] != d2.shape[1]:
            return x2.T @ d2
        # the bug: sum_i x_i * d_i, broadcast over the rows, instead of sum_i x_i (outer) d_i
        return np.broadcast_to((x2 * d2).sum(axis=0), (x2.shape[1], d2.shape[1])).copy()

    def _recurrent_outer(self, h, d):
        # U's gradient comes as one product for all gate blocks: the bug in each H x H block
        H = h.shape[-1]
        return np.concatenate([self._outer(h, d[..., k:k + H]) for k in range(0, d.shape[-1], H)],
                              axis=1)


class OffByOneWindowGRU(OffByOneWindow, GRU):
    __doc__ = OffByOneWindow.__doc__

class MaskIgnoredInBackwardGRU(GRU):
    """Mask forgotten in the backward pass: every step is back-propagated as if
    unmasked, although the forward pass carried the state over.

    Wrong parameters: every recurrent parameter, whenever a sequence has a masked
    step before an unmasked one (right padding alone, masked steps at the end that
    nothing back-propagates into, leaves the gradient right).
    """

    def dormant(self, batch):
        off = np.asarray(batch.mask) == 0
        later_on = np.flip(np.cumsum(np.flip(~off, 0), 0), 0) > np.asarray(~off, int)
        if not np.any(off & later_on):
            return ("it matters only at a masked step followed by an unmasked one in the same "
                    "sequence: use --mask random")
        return None

    def _backward_mask(self, lc, steps):
        return None                         # the bug: m_t taken as 1 (None: every sequence on)


class BlogResetDeltaGRU(GRU):
    """Reset-gate delta (blog): no sigma'(a_r), the reset gate's matrix where the
    candidate's belongs, and the product order swapped.

    The blog: ``delta_hr = W_r^T (delta_h * s_{t-1})``.  Correct:
    ``(W_h^T delta_h) * s_{t-1} * sigma'(a_r)``; here ``(da_h * h) U_r^T`` for
    ``(da_h U_h^T) * h * g'(a_r)``.  Wrong parameters: block r; reset="before".
    """

    def dormant(self, batch):
        return _needs_reset_before(self)

    def _reset_gate_delta(self, da_h, h, q, U, slope_r):
        H = self.config.hidden_size
        if q is not None:
            return super()._reset_gate_delta(da_h, h, q, U, slope_r)
        return (da_h * h) @ U[:, :H].T              # the bug: wrong matrix, order, no slope


class BlogStateAdjointOrderGRU(GRU):
    """State adjoint through the candidate with the product order swapped (blog):
    the reset gate applied before the transposed matrix instead of after it.

    The blog: ``delta_s += W_h^T (delta_h * r)``.  Correct: ``(W_h^T delta_h) * r``;
    here ``(da_h * r) U_h^T`` for ``(da_h U_h^T) * r``.  Only the carried adjoint
    dL/dh_{t-1} is wrong, so every parameter that step t - 1 and earlier steps
    touch is wrong, and the last step's contributions are not.  reset="before".
    """

    def dormant(self, batch):
        return _needs_reset_before(self)

    @staticmethod
    def _candidate_state_adjoint(da_h, U_h, r):
        return (da_h * r) @ U_h.T                   # the bug: the gate inside the product


class BlogOutputDeltaEveryLayerGRU(GRU):
    """Output delta re-injected into every layer (blog): each lower layer receives
    the readout's V^T delta_o instead of the input delta of the layer above.

    Wrong parameters: every parameter below the top layer (layers >= 2).
    """

    def dormant(self, batch):
        if self.config.layers < 2:
            return "it changes the layers below the top one only: use --layers 2 or more"
        return None

    @staticmethod
    def _adjoint_for_layer_below(dx, dtop):
        return dtop                                 # the bug: V^T delta_o again


class BlogHardSigmoidSlopeGRU(GRU):
    """Hard-sigmoid slope from the gate's output (blog): the pre-activation formula
    0.2 if -2.5 < a < 2.5 applied to g in [0, 1] is 0.2 everywhere, saturated
    gates included.  Wrong parameters: blocks r and z, where gates saturate;
    gate="hard".
    """

    def dormant(self, batch):
        if self.config.gate != "hard":
            return "it is a bug of hard-sigmoid gates: use --gate hard"
        return None

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        if self.config.gate == "hard":
            self.gate_grad = lambda a, g: hard_sigmoid_grad(g, g)   # the bug: g for a


class BlogEmbeddingWordGRU(GRU):
    """Embedding gradient to the wrong word (blog): the input delta of every
    back-propagated step is added to the row of the word at the loss step
    (``dLdE[:, word[t]]``) instead of the word at that step.  Wrong parameter: E.
    """

    def dormant(self, batch):
        if not self.config.embedding or batch.mask.shape[0] < 2:
            return ("it sends embedding gradients of earlier steps to the wrong word: use "
                    "--embedding and at least 2 steps")
        return None

    @staticmethod
    def _embedding_rows(batch, span, t_loss):
        rows = batch.x[span]
        return np.broadcast_to(batch.x[t_loss], rows.shape)   # the bug: word[t]


class BlogEmptyLoopGRU(GRU):
    """Empty truncation loop (blog): full BPTT written as bptt_truncate = -1 in
    ``range(max(0, t - k), t + 1)``, which is empty, so every recurrent
    gradient is zero.  Wrong parameters: everything but V and c.
    """

    def dormant(self, batch):
        if self.truncation.kind != "full":
            return "it empties the loop of full BPTT only: leave out --truncate (or use -1)"
        return None

    def _window_start(self, t, steps):
        if self.truncation.kind == "full":
            return max(0, t - (-1))                 # the bug: k = -1 empties the loop
        return super()._window_start(t, steps)


class BlogOutputMutatedGRU(GRU):
    """Forward output mutated by the backward pass (blog: ``delta_o = o``, then
    ``delta_o[t, y] -= 1``), here with a forward cache that keeps the softmax:
    after one gradient the cached output is delta_o, and the loss read from it
    is wrong.  The harness reports the cell as not a function of its inputs.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._cached = None

    @staticmethod
    def _key(params, batch):
        return (tuple((k, v.tobytes()) for k, v in sorted(params.items())),
                batch.x.tobytes(), batch.y.tobytes(), batch.mask.tobytes())

    def forward(self, params, batch):
        key = self._key(params, batch)
        if self._cached is not None and self._cached[0] == key:
            cache = self._cached[1]                 # reuse the forward pass: a cache
        else:
            _, cache = super().forward(params, batch)
            cache["readout"]["probs"] = np.exp(cache["readout"]["logp"])
            self._cached = (key, cache)
        probs = cache["readout"]["probs"]
        m, B = batch.mask, batch.mask.shape[1]
        if self.config.readout == "lm":
            picked = np.take_along_axis(probs, batch.y[..., None], -1)[..., 0]
            with np.errstate(invalid="ignore", divide="ignore"):
                loss = -(m * np.log(picked)).sum() / B
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                loss = -np.log(probs[np.arange(B), batch.y]).sum() / B
        # complex under the complex step, as the reference cell's loss is
        return (complex(loss) if np.iscomplexobj(loss) else float(loss)), cache

    def _readout_backward(self, params, top, batch, rc, grads):
        dtop = super()._readout_backward(params, top, batch, rc, grads)
        delta_o = rc["probs"]                       # the bug: delta_o = o, no copy ...
        if self.config.readout == "lm":             # ... so this lands in the forward output
            np.put_along_axis(delta_o, batch.y[..., None],
                              np.take_along_axis(delta_o, batch.y[..., None], -1) - 1.0, -1)
        else:
            delta_o[np.arange(batch.mask.shape[1]), batch.y] -= 1.0
        return dtop


def _needs_reset_before(cell):
    if cell.config.reset != "before":
        return "it is in the reset-before form's backward pass: use --reset before"
    return None


BROKEN_GRUS = {
    "reset-gate-derivative": ResetGateMissingDerivativeGRU,
    "wrapped-time-index": WrappedTimeIndexGRU,
    "elementwise-product": ElementwiseProductGRU,
    "off-by-one-window": OffByOneWindowGRU,
    "mask-ignored-in-backward": MaskIgnoredInBackwardGRU,
    "blog-reset-delta": BlogResetDeltaGRU,
    "blog-state-adjoint-order": BlogStateAdjointOrderGRU,
    "blog-output-delta-every-layer": BlogOutputDeltaEveryLayerGRU,
    "blog-hard-sigmoid-slope": BlogHardSigmoidSlopeGRU,
    "blog-embedding-word": BlogEmbeddingWordGRU,
    "blog-empty-loop": BlogEmptyLoopGRU,
    "blog-output-mutated": BlogOutputMutatedGRU,
}

# the seed blog's bugs, in the order its text meets them
SEED_BLOG_BUGS = ("wrapped-time-index", "blog-reset-delta", "blog-state-adjoint-order",
                  "elementwise-product",
                  "blog-output-delta-every-layer", "blog-hard-sigmoid-slope",
                  "blog-embedding-word", "blog-empty-loop", "blog-output-mutated")
