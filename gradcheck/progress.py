"""Progress of the numeric oracle, for a caller that shows it.

The numeric oracle announces how many elements it will differentiate
(``task``) and reports each finished pass (``advance``), on the thread that
called it, whichever thread or worker process ran the pass.  Nothing is
shown, and nothing costs more than a global look-up, unless a caller
installed a display with ``showing``: the ``gradcheck``
command does, a :class:`TqdmBar` on stderr when stderr is a terminal (a check
of a large cell can run for minutes).

A display has ``start(what, total)``, ``update(n)`` and ``finish()``;
``update`` is called under a lock, so the display need not be thread-safe.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

__all__ = ["showing", "task", "advance", "TqdmBar"]

_lock = threading.Lock()
_display = None


@contextmanager
def showing(display):
    """Inside: progress goes to ``display`` (None: nowhere)."""
    global _display
    outer, _display = _display, display
    try:
        yield display
    finally:
        _display = outer


@contextmanager
def task(what: str, total: int):
    """A task of ``total`` units (elements) named ``what``; ``advance`` counts them off."""
    display = _display
    if display is None:
        yield
        return
    display.start(what, total)
    try:
        yield
    finally:
        display.finish()


def advance(n: int) -> None:
    """``n`` more units of the current task are done."""
    display = _display
    if display is not None:
        with _lock:
            display.update(int(n))


class TqdmBar:
    """A tqdm progress bar, drawn only once a task has run ``delay`` seconds.

    file: where to draw it (stderr).
    delay: seconds before the bar appears, so quick checks print nothing extra.
    """

    def __init__(self, file=None, delay: float = 1.0):
        self.file = file if file is not None else sys.stderr
        self.delay = delay
        self._bar = None

    def start(self, what, total):
        from tqdm import tqdm                           # only when a check runs

        class Bar(tqdm):
            # no monitor thread: the numeric oracle forks its workers only while this
            # process runs one thread (gradcheck.probe_pool.can_fork)
            monitor_interval = 0

        self._bar = Bar(total=total, desc=what, unit="element", file=self.file,
                        delay=self.delay, leave=False, dynamic_ncols=True)

    def update(self, n):
        if self._bar is not None:
            self._bar.update(n)

    def finish(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
