"""Many copies of a lookup table, each with one element set, without the copies.

The numeric oracle perturbs one element at a time, and a vectorised pass
stacks P perturbed copies of the parameter along a probe axis.  For an
embedding E (V, D) that is P copies of the whole table for a forward pass
that reads only the rows the batch names: the work grows with V D per probe.
A :class:`PerturbedRows` keeps E once and, per probe p, the element it sets
(row i_p, column j_p, value v_p).  Indexing it as the forward pass does,
``E[..., ids, :]``, gives for every probe exactly the rows that probe's copy
holds: E[ids] with v_p written where ids == i_p, column j_p.  The values are
the copies' values, so the losses are the same to the bit.

A cell takes these in place of a stacked table when it says so
(``takes_perturbed_rows(name)``): it reads the parameter only through
``E[..., ids, :]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PerturbedRows"]


class PerturbedRows:
    """P copies of ``base`` (V, D), copy p with element (rows[p], cols[p]) set to values[p].

    base: the shared table (V, D).
    rows: (P,) the row each probe changes.
    cols: (P,) its column.
    values: (P,) the element's value in that probe (complex under the complex step).

    Supports the row lookup ``M[..., ids, :]`` only, as the stacked (P, V, D) array would.
    """

    __array_ufunc__ = None          # no arithmetic: a lookup is all it offers

    def __init__(self, base, rows, cols, values):
        self.base = np.asarray(base)
        self.rows = np.asarray(rows, dtype=np.intp)
        self.cols = np.asarray(cols, dtype=np.intp)
        self.values = np.asarray(values)
        self.dtype = np.result_type(self.base, self.values)
        self.shape = (len(self.rows),) + self.base.shape
        self.ndim = 3

    def __getitem__(self, key):
        """``M[..., ids, :]`` -> (P, *ids.shape, D): each probe's copy, looked up."""
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] is Ellipsis
                and key[2] == slice(None)):
            raise TypeError(f"PerturbedRows supports [..., ids, :] only, got {key!r}")
        ids = np.asarray(key[1])
        P = self.shape[0]
        out = np.empty((P,) + ids.shape + self.base.shape[1:], dtype=self.dtype)
        out[...] = self.base[ids]                           # every probe reads the shared rows
        # then probe p's own element, wherever its row is looked up
        hit = ids[None] == self.rows.reshape((P,) + (1,) * ids.ndim)   # (P, *ids.shape)
        where = np.nonzero(hit)
        out[where + (self.cols[where[0]],)] = self.values[where[0]]
        return out
