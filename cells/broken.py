"""Deliberately BROKEN GRUs: each has one real derivation bug in its backward pass.

They are test material, never reference cells: every check in the toolkit must
be shown to fail on them.  Each class changes one small piece of the
reference GRU's hand BPTT and keeps its forward pass, so the numeric and
autodiff oracles still see the true gradient.
"""

from __future__ import annotations

import numpy as np

from cells.gru import GRU

__all__ = ["BROKEN_GRUS", "ResetGateMissingDerivativeGRU", "WrappedTimeIndexGRU",
           "ElementwiseProductGRU", "OffByOneWindowGRU", "MaskIgnoredInBackwardGRU"]


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
    """Wrong time index: the state before step t is read as s[t-1], which at t = 0
    wraps to the last step's state instead of the zero initial state.

    Wrong parameters: U (every block) at step 0.
    """

    @staticmethod
    def _previous_state(hs, t):
        states = hs[1:]                 # states[t] = h_t
        return states[t - 1]            # the bug: t = 0 gives states[-1] = h_{T-1}


class ElementwiseProductGRU(GRU):
    """Wrong product: a square weight gradient accumulated with an elementwise
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


class OffByOneWindowGRU(GRU):
    """Wrong truncation window: BPTT(k) written as ``range(t - k + 1, t + 1)``, so the
    loss at step t reaches back over k steps instead of k + 1 (max(0, t - k) .. t).

    Wrong parameters: every recurrent parameter, when truncate=k < T - 1, truncation=window.
    """

    def _window_start(self, t, steps):
        if self.truncation.kind != "window":
            return super()._window_start(t, steps)
        return max(0, t - self.truncation.k + 1)     # the bug: one step short


class MaskIgnoredInBackwardGRU(GRU):
    """Mask forgotten in the backward pass: every step is back-propagated as if
    unmasked, although the forward pass carried the state over.

    Wrong parameters: every recurrent parameter, whenever the mask has zeros.
    """

    def _layer_step_backward(self, l, params, dh, h, step_cache, grads):
        a_rz, rz, n, q, mt = step_cache
        unmasked = (a_rz, rz, n, q, np.ones_like(mt))   # the bug: m_t taken as 1
        return super()._layer_step_backward(l, params, dh, h, unmasked, grads)


BROKEN_GRUS = {
    "reset-gate-derivative": ResetGateMissingDerivativeGRU,
    "wrapped-time-index": WrappedTimeIndexGRU,
    "elementwise-product": ElementwiseProductGRU,
    "off-by-one-window": OffByOneWindowGRU,
    "mask-ignored-in-backward": MaskIgnoredInBackwardGRU,
}
