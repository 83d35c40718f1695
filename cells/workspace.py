"""Working arrays reused from one call of a cell to the next on the same thread.

A forward and backward pass of a large GRU fills tens of megabytes of fresh
arrays (x W + b of every step, the states, the gates kept for the backward
pass, dL/dxp).  With glibc's default malloc such arrays are returned to the
kernel when freed and come back as fresh pages on the next call: at
(T, B, D, H) = (50, 32, 128, 256) about 6,000 page faults a call, which cost
as much as the forward pass's arithmetic.  Inside ``reusing_arrays()`` a cell
takes its large working arrays from the calling thread's workspace instead,
which keeps one flat buffer per name and hands out views of it, so the pages
stay mapped from one call to the next.

Only code that drops every array before its context ends may use it: the
cells' ``loss`` and ``loss_and_gradient`` (their results are new arrays), and only while the forward pass is the reference cell's own (a
subclass that overrides ``forward`` may keep its cache from one call to the
next: it gets fresh arrays).  A nested context (a cell used inside another cell's pass) gets
fresh arrays, never the outer call's.  Outside any context ``active()`` hands
out fresh arrays, so ``forward``'s cache stays the caller's to keep.

A thread's buffers live as long as the thread: up to the largest working set
of a call it made, at most ``KEEP_LIMIT_BYTES`` (1 GiB; beyond it arrays are
allocated afresh).  ``release()`` frees the calling thread's buffers.  The
numeric oracle's vectorised passes (``losses``) do not use it: they run on
worker threads or processes that end with the oracle, and measured slower
with it (their arrays are capped in size, and malloc reuses them within a
pass).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from math import prod

import numpy as np

__all__ = ["Workspace", "active", "reusing_arrays", "release", "REUSE_BYTES",
           "KEEP_LIMIT_BYTES"]

# smaller arrays are allocated afresh: malloc serves them from its free lists
# (glibc maps arrays of 128 KiB and more afresh from the kernel), and a view
# of a kept buffer costs more than a small allocation (measured 4% of a small
# GRU's forward and backward)
REUSE_BYTES = 1 << 17
# a thread keeps at most this many bytes of buffers; past it, arrays are allocated
# afresh (a very large cell's working set is not held between calls)
KEEP_LIMIT_BYTES = 1 << 30


class Workspace:
    """Arrays by name: ``empty(name, shape, dtype)``.

    reuse: True keeps one buffer per name and returns views of it (the same
        memory for the same name on every call); False allocates every time.
    """

    def __init__(self, reuse: bool):
        self.reuse = reuse
        self._buffers: dict = {}

    def empty(self, name, shape, dtype=np.float64) -> np.ndarray:
        """An uninitialised C-contiguous array; with reuse and at least ``REUSE_BYTES``, a
        view of buffer ``name`` (grown when too small), valid until the next request
        for ``name``."""
        dtype = np.dtype(dtype)
        size = prod(shape)
        if not self.reuse or size * dtype.itemsize < REUSE_BYTES:
            return np.empty(shape, dtype)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            kept = sum(b.nbytes for k, b in self._buffers.items() if k != name)
            if kept + size * dtype.itemsize > KEEP_LIMIT_BYTES:
                return np.empty(shape, dtype)                   # not kept: over the limit
            buf = self._buffers[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def zeros(self, name, shape, dtype=np.float64) -> np.ndarray:
        """``empty`` filled with zeros."""
        out = self.empty(name, shape, dtype)
        out.fill(0)
        return out


_FRESH = Workspace(reuse=False)
_local = threading.local()


def active() -> Workspace:
    """The calling thread's workspace inside ``reusing_arrays()``, else one that
    allocates fresh arrays."""
    return getattr(_local, "current", None) or _FRESH


@contextmanager
def reusing_arrays(enabled: bool = True):
    """Inside: ``active()`` is the calling thread's reusing workspace (fresh arrays
    in a nested context, whose outer call still holds the thread's buffers, and
    when not ``enabled``)."""
    outer = getattr(_local, "current", None)
    if outer is not None or not enabled:
        _local.current = _FRESH
    else:
        kept = getattr(_local, "kept", None)
        if kept is None:
            kept = _local.kept = Workspace(reuse=True)
        _local.current = kept
    try:
        yield _local.current
    finally:
        _local.current = outer


def release() -> None:
    """Free the calling thread's buffers (the next call allocates them again)."""
    _local.kept = None
