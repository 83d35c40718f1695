"""Running the numeric oracle's vectorised passes several at a time.

A pass (``cell.losses`` of a few dozen probes) is a few hundred NumPy calls
on small arrays.  NumPy releases the GIL inside its loops but not between
them, so on worker threads the passes wait for each other: two threads gave
1.4-1.5x on two cores.  Forked processes do not share a GIL: on two cores the
exact check of a (20, 8, 16, 32) GRU ran 1.45x faster than on two threads.

``probe_pool(workers, processes)`` yields ``run(fn, items, on_result)``, which
calls ``on_result(k, fn(items[k]))`` for every item, always on the calling
thread, in the order the results arrive.  ``fn`` must not change anything
the caller reads (a forked process changes its own copy): it returns its
results, and ``on_result`` stores them.  Each item's result is the same
whichever thread or process computed it, so the numbers do not depend on the
worker count.

Processes are forked (Linux only), when the caller says the passes are safe
to run in a fork (the reference cells' passes run NumPy only), from the main
thread of a process with no other Python thread (a lock held by one would
stay held in the child).  A fork that fails (no more processes) leaves the
work to those there are.  The first item runs here, timed; the others, when
they would take ``FORK_WORTH_SECONDS`` or more, go to a queue of tickets (a
pipe) that this process and W - 1 forked children take from one at a time.  A child
writes each result to a pipe as it finishes, and the caller reads them
between its own passes.  A child that fails or dies leaves its items to the
caller, which computes them itself: an error in ``fn`` is raised there, with
its own traceback.  Ctrl-C or an error in the caller kills the children, and
the kernel kills them if the caller dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import warnings

import numpy as np

__all__ = ["probe_workers", "probe_pool", "can_fork", "forks_for", "FORK_WORTH_SECONDS"]

# a message from a child: its length, then the pickled (item index, result)
_HEADER = struct.Struct("<Q")
# fork only when the items left would take this long on one process: a fork, its pipe
# and its reaping cost 2-5 ms (more for a process holding more memory)
FORK_WORTH_SECONDS = 0.05


def probe_workers(workers=None) -> int:
    """How many passes run at once (threads or processes).

    workers: an explicit number, returned as is; None: the CPUs this process may
        use, at most 4.
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers={workers!r} must be a positive integer")
        return int(workers)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                                      # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def can_fork() -> bool:
    """Whether passes may run in forked processes here: Linux (macOS's system libraries
    are not safe across fork), and no Python thread but this one, the main thread."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and threading.active_count() == 1
            and threading.current_thread() is threading.main_thread())


def forks_for(cell, processes=None) -> bool:
    """Whether ``cell``'s passes run in forked processes: where ``can_fork()``, as asked,
    or when not asked (None), when the cell says its passes may (``probes_fork_safe``:
    they run NumPy only)."""
    if processes is None:
        processes = getattr(cell, "probes_fork_safe", False)
    return bool(processes) and can_fork()


@contextlib.contextmanager
def probe_pool(workers: int, processes: bool = False):
    """Yields ``run(fn, items, on_result)``: ``fn`` over ``items`` on ``workers`` threads
    or processes, each result handed to ``on_result(k, result)`` on this thread.

    workers: how many passes at once; 1 runs them here, one after the other.
    processes: fork processes (when ``can_fork()``) instead of starting threads.

    The BLAS pool is held to one thread meanwhile (a pass's products are small;
    its threads and ours would oversubscribe the cores).  Without threadpoolctl,
    everything runs on this thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                         # a dependency left out: one thread
        workers = 1
    if workers <= 1:
        yield _run_here
        return
    with threadpool_limits(limits=1, user_api="blas"):
        if processes and can_fork():
            yield lambda fn, items, on_result: _run_forked(fn, items, on_result, workers)
        else:
            with _thread_pool(workers) as run:
                yield run


def _run_here(fn, items, on_result):
    for k, item in enumerate(items):
        on_result(k, fn(item))


@contextlib.contextmanager
def _thread_pool(workers):
    """Threads: an exception cancels the passes not yet started and reaches the caller
    once the running ones end; Ctrl-C reaches it at once."""
    # imported here: concurrent.futures (and the logging it imports) is ~3 ms of a
    # command's start, and a check whose passes fork never uses it
    from concurrent.futures import ThreadPoolExecutor, as_completed

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gradcheck-probes")
    interrupted = False

    def run(fn, items, on_result):
        futures = {pool.submit(fn, item): k for k, item in enumerate(items)}
        try:
            for future in as_completed(futures):                # as each pass ends
                on_result(futures[future], future.result())     # raises fn's error
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    try:
        yield run
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # Ctrl-C: back to the caller at once, not after the passes already running (a
        # pass of a large cell takes seconds); what they compute is dropped with them
        pool.shutdown(wait=not interrupted, cancel_futures=True)


def _run_forked(fn, items, on_result, workers):
    """The first item here, then, if the rest would take ``FORK_WORTH_SECONDS`` or more
    at its pace, every process, this one and W - 1 forked children, takes the next item
    from a shared queue of tickets until it is empty (a child that ends early leaves no
    one idle); where the queue cannot hold every item, a fixed share: k = j + 1,
    j + 1 + W, ... for process j."""
    workers = min(workers, len(items))
    if workers <= 1:
        return _run_here(fn, items, on_result)
    # the first item here, timed: a fork is not worth it for a few milliseconds of work
    start = time.perf_counter()
    on_result(0, fn(items[0]))
    if (time.perf_counter() - start) * (len(items) - 1) < FORK_WORTH_SECONDS:
        for k in range(1, len(items)):
            on_result(k, fn(items[k]))
        return
    tickets = _ticket_queue(len(items), first=1)
    if tickets is None:
        shares = [range(j + 1, len(items), workers) for j in range(workers)]
    else:
        shares = [_tickets(tickets) for _ in range(workers)]
    children = []
    try:
        for share in shares[1:]:
            _fork_child(fn, items, share, children)
    except OSError:
        pass            # no more processes (EAGAIN, ENOMEM): on with those there are
    except BaseException:
        _close(tickets, children)
        raise
    received = {0}

    def take(k, result):
        received.add(k)
        on_result(k, result)

    try:
        for k in shares[0]:
            take(k, fn(items[k]))
            _receive(children, take, block=False)   # what the children finished meanwhile
        _receive(children, take, block=True)        # to the end of every child's pipe
    finally:
        _close(tickets, children)
    # a child that failed or died: its remaining items, here (an error in fn is raised)
    for k in range(len(items)):
        if k not in received:
            take(k, fn(items[k]))


def _close(tickets, children):
    """Close the ticket queue and the children's pipes, kill the children still running
    (Ctrl-C, or an error here), and reap them all, whatever fails on the way."""
    try:
        if tickets is not None:
            os.close(tickets)
    finally:
        for child in children:
            child.kill()
        _reap(children)


def _reap(children):
    """Reap every child, even if reaping one is interrupted (a second Ctrl-C)."""
    if children:
        try:
            children[0].reap()
        finally:
            _reap(children[1:])


# one ticket: an item's index, read whole (a pipe's reads of at most PIPE_BUF bytes
# do not interleave, and the queue is written in full before anyone reads)
_TICKET = struct.Struct("<I")


def _ticket_queue(count, first=0):
    """The read end of a pipe holding tickets first .. count - 1, its write end closed;
    None when the pipe cannot hold them all (its capacity is raised up to the system's
    limit)."""
    size = (count - first) * _TICKET.size
    read_fd, write_fd = os.pipe()
    try:
        if size > (64 << 10):
            import fcntl
            try:
                if fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, size) < size:
                    raise OSError
            except (OSError, AttributeError):
                os.close(read_fd)
                return None
        data = b"".join(_TICKET.pack(k) for k in range(first, count))
        os.set_blocking(write_fd, False)
        try:
            written = os.write(write_fd, data)
        except BlockingIOError:                     # no room at all
            written = 0
        if written != len(data):                    # (a user past pipe-user-pages-soft
            os.close(read_fd)                       # gets one-page pipes)
            return None
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def _tickets(fd):
    """The indices of the items this process takes from the queue, one at a time."""
    while True:
        ticket = os.read(fd, _TICKET.size)
        if not ticket:
            return
        yield _TICKET.unpack(ticket)[0]


def _receive(children, take, block):
    """Hand the children's finished results to ``take``: what their pipes hold now, or,
    when ``block``, everything up to the end of every pipe (read as it comes, so that no
    child waits on a full pipe).  ``poll``, as ``select`` takes no descriptor past 1023."""
    while True:
        open_fds = {child.fd: child for child in children if child.open}
        if not open_fds:
            return
        poller = select.poll()
        for fd in open_fds:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(None if block else 0)
        if not ready:
            return
        for fd, _ in ready:
            open_fds[fd].read(take)


class _Child:
    """A forked child's pid and the read end of its pipe, with the bytes not yet parsed."""

    def __init__(self, pid, fd):
        self.pid, self.fd, self.buffer, self.open = pid, fd, bytearray(), True

    def read(self, take):
        """One read from the pipe; hand every complete message to ``take(k, result)``."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.open = False
        self.buffer += chunk
        while len(self.buffer) >= _HEADER.size:
            size, = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + size:
                break
            k, result = pickle.loads(self.buffer[_HEADER.size:_HEADER.size + size])
            del self.buffer[:_HEADER.size + size]
            take(k, result)

    def kill(self):
        """Close the pipe; SIGKILL the child unless it closed its end (it has finished)."""
        running, self.open = self.open, False
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def reap(self):
        """Wait for the child to end (no zombie left); a process that ignores SIGCHLD has
        its children reaped by the kernel instead."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _fork_child(fn, items, mine, children):
    """Fork a child running ``fn`` over the items ``mine`` yields; its ``_Child`` is
    appended to ``children``.  A Ctrl-C meanwhile is held back until the child is in
    ``children``, so that it is killed with the others (a process's SIGINT may reach a
    BLAS thread, so masking it on this thread would not hold it back)."""
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    held = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns of a fork in a multi-threaded process, counting
                # threads Python does not own (the BLAS library's idle pool); can_fork()
                # saw no other Python thread, and the child runs fn only, then os._exit
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            _child_main(fn, items, mine, read_fd, write_fd, handler, parent)
        os.close(write_fd)
        children.append(_Child(pid, read_fd))
    finally:
        signal.signal(signal.SIGINT, handler)
        if held:
            signal.raise_signal(signal.SIGINT)      # now, through the caller's handler


def _child_main(fn, items, mine, read_fd, write_fd, handler, parent):
    """The child: ``fn`` over its items, each result to the pipe; it never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, handler)
        _end_with(parent)
        os.close(read_fd)
        for k in mine:                              # a range, or the shared ticket queue
            data = pickle.dumps((k, fn(items[k])), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(_HEADER.pack(len(data)) + data)
            while view:
                view = view[os.write(write_fd, view):]
        code = 0
    finally:
        os._exit(code)


def _end_with(parent):
    """Have the kernel kill this child when the process that forked it ends, however it
    ends (``prctl(PR_SET_PDEATHSIG, SIGKILL)``; without it a child outlives a killed
    caller until its next write to the closed pipe)."""
    import ctypes                                   # in the child only
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                      # it ended before the call took effect
        os._exit(1)
