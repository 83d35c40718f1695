"""A truncation bug of the BPTT driver that every stacked cell shares.

``cells.stacked.StackedCell`` runs truncated BPTT for the GRU and the LSTM
alike, so its bug is written once, as a mixin put before the cell:
``class OffByOneWindowGRU(OffByOneWindow, GRU)``.
"""

from __future__ import annotations

__all__ = ["OffByOneWindow"]


class OffByOneWindow:
    """Wrong truncation window: BPTT(k) written as ``range(t - k + 1, t + 1)``, so the
    loss at step t reaches back over k steps instead of k + 1 (max(0, t - k) .. t).

    Wrong parameters: every recurrent parameter, when truncate=k < T, truncation=window.
    """

    def dormant(self, batch):
        T = batch.mask.shape[0]
        if self.truncation.kind != "window" or self.truncation.k >= T:
            return ("it shortens truncation windows that start after step 0: use window "
                    f"truncation with fewer steps than the sequence (--truncate K with K < {T})")
        return None

    def _window_start(self, t, steps):
        if self.truncation.kind != "window":
            return super()._window_start(t, steps)
        return max(0, t - self.truncation.k + 1)     # the bug: one step short
