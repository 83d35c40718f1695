"""Deliberately BROKEN LSTMs: each has one real derivation bug in its backward pass.

Test material, never reference cells, as the GRUs of :mod:`cells.zoo.gru_bugs`:
each class changes one small piece of the reference LSTM's hand BPTT
(:mod:`cells.lstm`) and keeps its forward pass, so the numeric and autodiff
oracles still see the true gradient.  The gate blocks are i | f | o | c.  A
bug that only some configurations exercise has ``dormant(batch)``, as there.
"""

from __future__ import annotations

import numpy as np

from cells.lstm import LSTM
from cells.zoo.truncation_bugs import OffByOneWindow

__all__ = ["BROKEN_LSTMS", "ForgetGateMissingDerivativeLSTM", "CellStateWrongIndexLSTM",
           "OffByOneWindowLSTM", "CellTanhSlopeFromStateLSTM", "CellCarryWithoutForgetLSTM"]


class ForgetGateMissingDerivativeLSTM(LSTM):
    """Wrong gate derivative: the forget-gate delta lacks sigma'(a_f).

    Correct: da_f = df * sigma'(a_f).  Broken: da_f = df.
    Wrong parameters: block f of every W, U and b; everything below the top layer.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        H, true_grad = self.config.hidden_size, self.gate_grad

        def gate_grad(a, g):             # a, g: (B, 3H) blocks i | f | o
            d = true_grad(a, g)
            d[..., H:2 * H] = 1.0        # the bug: the forget gate's slope is dropped
            return d
        self.gate_grad = gate_grad


class CellStateWrongIndexLSTM(LSTM):
    """Wrong time index: the backward pass of step t reads c_t where c_{t-1} belongs
    (``df = dc * c[t]`` with ``c`` holding c_t at index t); h_{t-1} is read right.

    Wrong parameters: block f of every W, U and b, at every step.
    """

    @staticmethod
    def _previous_state(states, t):
        H = states.shape[-1] // 2
        return np.concatenate([states[t][..., :H], states[t + 1][..., H:]], axis=-1)  # c_t


class OffByOneWindowLSTM(OffByOneWindow, LSTM):
    __doc__ = OffByOneWindow.__doc__

class CellTanhSlopeFromStateLSTM(LSTM):
    """The output's slope through the cell state taken at the wrong point: 1 - c'^2
    where 1 - tanh(c')^2 belongs (the tanh derivative written for the pre-activation).

    Correct: dc' += dh' * o * (1 - tanh(c')^2).  Broken: dc' += dh' * o * (1 - c'^2).
    Wrong parameters: blocks i, f and c (everything dc' reaches) and, through the
    carried adjoints, every block at earlier steps.
    """

    @staticmethod
    def _cell_tanh_slope(tc):
        c = np.arctanh(tc)                          # c'_t back from tanh(c'_t)
        return 1.0 - c * c                          # the bug: 1 - c'^2


class CellCarryWithoutForgetLSTM(LSTM):
    """The forget gate left out of the cell-state recursion: dL/dc_{t-1} = dL/dc'_t,
    as if c'_t = c_{t-1} + i * u.

    Correct: dc_{t-1} = dc'_t * f_t.  Broken: dc_{t-1} = dc'_t.  The last step is
    right; every step before it receives a wrong cell-state adjoint.
    """

    @staticmethod
    def _cell_carry(dc_new, f):
        return dc_new.copy()                        # the bug: no * f


BROKEN_LSTMS = {
    "forget-gate-derivative": ForgetGateMissingDerivativeLSTM,
    "cell-state-wrong-index": CellStateWrongIndexLSTM,
    "off-by-one-window": OffByOneWindowLSTM,
    "cell-tanh-slope": CellTanhSlopeFromStateLSTM,
    "cell-carry-without-forget": CellCarryWithoutForgetLSTM,
}
