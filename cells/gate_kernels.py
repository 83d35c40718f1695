"""The compiled gate kernels (``cells/_gate_kernels.c``), when the install built them.

The GRU's and the LSTM's forward steps, a large GRU layer's rule-by-rule
backward step, and the lm readout of a vectorised pass hand their elementwise
arithmetic to them: the same operations in the same order as their NumPy
code, with NumPy's own exp, tanh and log loops, so the same numbers to the
last bit, in one pass over each probe's arrays instead of
a ufunc call per operation.  A kernel returns False, having written nothing,
when its arrays do not fit it (another dtype, a layout it does not take); the
step then runs its NumPy code.

``KERNELS`` is the compiled module, or None: not built (no C compiler at
install), or turned off by ``GRADCHECK_KERNELS=0`` in the environment.  The
numbers are the same either way; only the time differs.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["KERNELS", "BUILT", "status", "disabled"]

try:
    from cells import _gate_kernels as _built
except ImportError:                     # not built: the NumPy steps run
    _built = None

BUILT = _built is not None
KERNELS = _built if os.environ.get("GRADCHECK_KERNELS", "1") != "0" else None


def status() -> str:
    """One line saying whether the kernels run, and why not."""
    if KERNELS is not None:
        return "compiled gate kernels: on"
    if BUILT:
        by_env = os.environ.get("GRADCHECK_KERNELS", "1") == "0"
        return "compiled gate kernels: off" + (", by GRADCHECK_KERNELS=0" if by_env else "")
    return "compiled gate kernels: not built, the NumPy steps run (same numbers, slower)"


@contextlib.contextmanager
def disabled():
    """Run the NumPy steps inside the block (for tests that compare the two)."""
    global KERNELS
    saved, KERNELS = KERNELS, None
    try:
        yield
    finally:
        KERNELS = saved
