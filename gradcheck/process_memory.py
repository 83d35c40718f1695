"""Keep freed memory in the process, so that large arrays reuse it (glibc only).

By default glibc's malloc serves large blocks (from 128 KiB, raised as blocks
are freed) with fresh pages from the kernel and returns them on ``free``.  A
recurrent forward and backward pass allocates many such arrays every call
(per-step gates of (B, 3H), step caches and adjoints of (T, B, 3H)), and
every first touch of a fresh page is a page fault: at (T, B, D, H) = (50, 32,
128, 256) those faults were a third of the forward pass on the machines here.

:func:`keep_freed_memory` raises the two thresholds (``mallopt``), so blocks
up to ``mmap_threshold`` come from the heap and freed memory stays in the
process up to ``trim_threshold``; later arrays reuse pages already mapped.  The
same numbers are computed either way.  The command-line tool calls it at start;
a program that imports gradcheck may call it itself.  Elsewhere than glibc it
does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Serve blocks below ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of freed heap; True when glibc accepted both.

    mmap_threshold: blocks at least this large still get their own pages.
    trim_threshold: free memory at the top of the heap kept before any is returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        # the process's own symbols, the C library's among them (no library search:
        # ctypes.util.find_library and its import cost ~10 ms of a command's start)
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # glibc returns 1 on success, 0 for a value it refuses (musl: 0 always)
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))
                and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
