"""The pool that runs the numeric oracle's passes at once: threads, or forked processes."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gradcheck import probe_pool as pool_module
from gradcheck.probe_pool import can_fork, probe_pool

FORK = os.fork

forking = pytest.mark.skipif(not can_fork(), reason="forked workers need Linux and one thread")


@pytest.fixture(autouse=True)
def fork_for_any_work(monkeypatch):
    """These items take milliseconds: fork for them all the same."""
    monkeypatch.setattr(pool_module, "FORK_WORTH_SECONDS", 0.0)


def run_all(fn, items, workers=2, processes=True):
    """``{k: result}`` and the process ids that handed results to ``on_result``."""
    got, callers = {}, set()

    def on_result(k, result):
        assert k not in got, f"item {k} twice"
        got[k] = result
        callers.add((os.getpid(), threading.get_ident()))

    with probe_pool(workers, processes) as run:
        run(fn, items, on_result)
    return got, callers


def square_with_pid(x):
    time.sleep(0.005)                   # long enough that every process takes tickets
    return x * x, os.getpid()


@forking
@pytest.mark.parametrize("workers", [2, 3])
def test_every_item_once_from_several_processes_handed_over_here(workers):
    items = list(range(40))
    got, callers = run_all(square_with_pid, items, workers)
    assert {k: v[0] for k, v in got.items()} == {k: k * k for k in items}
    assert len({pid for _, pid in got.values()}) == workers     # each process took some
    assert callers == {(os.getpid(), threading.get_ident())}    # results arrive on this thread


@forking
def test_a_queue_too_long_for_a_pipe_and_the_fixed_shares_give_the_same(monkeypatch):
    items = list(range(20_000))                     # 80,000 bytes of tickets: over 64 KiB
    got, _ = run_all(lambda x: 3 * x, items)
    assert got == {k: 3 * k for k in items}
    monkeypatch.setattr(pool_module, "_ticket_queue", lambda count, first: None)
    shares, _ = run_all(square_with_pid, list(range(10)), workers=3)
    pids = [shares[k][1] for k in range(10)]
    # item 0 here, then k = j + 1, j + 4, ... in process j (this one is 0)
    assert pids[0] == os.getpid() and pids[1::3] == [os.getpid()] * 3
    assert len(set(pids[2::3])) == len(set(pids[3::3])) == 1 and len(set(pids)) == 3


@forking
@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_failing_child_leaves_its_items_to_the_caller(how):
    parent = os.getpid()

    def fn(x):
        if os.getpid() != parent:
            if how == "raises":
                raise RuntimeError("in a child")
            os.kill(os.getpid(), signal.SIGKILL)
        return x + 1, os.getpid()

    got, _ = run_all(fn, list(range(12)))
    assert {k: v[0] for k, v in got.items()} == {k: k + 1 for k in range(12)}
    assert {pid for _, pid in got.values()} == {parent}


@forking
def test_an_error_in_an_item_reaches_the_caller_and_no_child_is_left(tmp_path):
    pids = tmp_path / "pids"

    def fn(x):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.005)
        if x == 5:
            raise ValueError(f"bad item {x}")
        return x

    with pytest.raises(ValueError, match="bad item 5"):
        run_all(fn, list(range(30)))
    children = set(map(int, pids.read_text().split())) - {os.getpid()}
    assert children, "no child ran"
    for pid in children:                            # reaped: no zombie, nothing running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@forking
def test_ctrl_c_kills_the_children_at_once(monkeypatch):
    # a child sends the caller a real SIGINT, then blocks for a minute
    parent = os.getpid()
    children = []

    class Recorded(pool_module._Child):
        def __init__(self, pid, fd):
            super().__init__(pid, fd)
            children.append(pid)

    monkeypatch.setattr(pool_module, "_Child", Recorded)

    def fn(x):
        if os.getpid() != parent:
            os.kill(parent, signal.SIGINT)
            time.sleep(60)
        time.sleep(0.001)               # the child finds tickets left, however late it starts
        return x

    def on_result(k, result):
        pass

    begin = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with probe_pool(2, True) as run:
            run(fn, list(range(10_000)), on_result)
    assert time.perf_counter() - begin < 30
    assert children
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class OneMillisecondEachRead:
    """A clock for ``probe_pool``'s ``time`` that moves 1 ms each read: the first item,
    timed by two reads, takes 1 ms however loaded the machine."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1e-3
        return self.now


@forking
def test_a_few_milliseconds_of_work_run_here_without_a_fork(monkeypatch):
    def no_fork():
        raise AssertionError("forked for a few milliseconds of work")

    monkeypatch.setattr(pool_module, "FORK_WORTH_SECONDS", 0.05)
    monkeypatch.setattr(pool_module, "time", OneMillisecondEachRead())
    monkeypatch.setattr(os, "fork", no_fork)
    got, _ = run_all(lambda x: (x, os.getpid()), list(range(50)))    # 49 ms left: here
    assert got == {k: (k, os.getpid()) for k in range(50)}
    monkeypatch.setattr(os, "fork", FORK)
    slow, _ = run_all(square_with_pid, list(range(52)))                # 51 ms left: forked
    assert len({pid for _, pid in slow.values()}) == 2


@forking
def test_ctrl_c_just_after_a_fork_still_kills_that_child(monkeypatch):
    # SIGINT reaches this process as fork returns, before the child is on the list of
    # children: the KeyboardInterrupt must wait until it is, or the child is left running
    forked, parent = [], os.getpid()

    def fork_then_ctrl_c():
        pid = FORK()
        if pid:
            forked.append(pid)
            signal.raise_signal(signal.SIGINT)
        return pid

    def fn(x):
        if os.getpid() != parent:
            time.sleep(60)
        return x

    monkeypatch.setattr(os, "fork", fork_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_all(fn, list(range(20)))
        assert len(forked) == 1
        with pytest.raises(ProcessLookupError):         # killed and reaped
            os.kill(forked[0], 0)
    finally:
        for pid in forked:                              # a child left running: end it
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def test_with_another_thread_running_the_pool_uses_threads(monkeypatch):
    def no_fork():
        raise AssertionError("forked with another thread running")

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not can_fork()
        monkeypatch.setattr(os, "fork", no_fork)
        got, _ = run_all(lambda x: np.sqrt(x), list(range(10)))
    finally:
        stop.set()
        other.join()
    assert got == {k: np.sqrt(k) for k in range(10)}


def test_on_threads_each_result_is_handed_over_as_its_pass_ends():
    # pass 1 waits until pass 0's result has reached on_result: handed over only once
    # every pass had ended, it would wait in vain
    handed = threading.Event()

    def fn(x):
        return x if x == 0 else handed.wait(10)

    got = {}

    def on_result(k, result):
        got[k] = result
        if k == 0:
            handed.set()

    with probe_pool(2, processes=False) as run:
        run(fn, [0, 1], on_result)
    assert got == {0: 0, 1: True}


@forking
def test_a_child_ends_with_its_caller_however_the_caller_ends(tmp_path):
    # a caller killed outright (SIGKILL: no Python runs) while its child is mid-pass
    pids = tmp_path / "child"
    code = f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from gradcheck import probe_pool
probe_pool.FORK_WORTH_SECONDS = 0.0
parent = os.getpid()

def fn(x):
    if os.getpid() != parent:
        with open({str(pids)!r}, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    time.sleep(0.01)
    return x

with probe_pool.probe_pool(2, True) as run:
    run(fn, list(range(10_000)), lambda k, r: None)
"""
    caller = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 30
        while not (pids.exists() and pids.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        child = int(pids.read_text())
        caller.kill()
        caller.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _running(child):
            time.sleep(0.05)
        assert not _running(child)
    finally:
        caller.kill()
        if pids.exists() and pids.read_text() and _running(int(pids.read_text())):
            os.kill(int(pids.read_text()), signal.SIGKILL)


def _running(pid):
    """Whether process ``pid`` is alive (a zombie awaiting its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@forking
def test_a_fork_that_fails_leaves_the_work_to_the_processes_there_are(monkeypatch):
    forks = []

    def fork_once_then_fail():
        if forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forks.append(1)
        return FORK()

    monkeypatch.setattr(os, "fork", fork_once_then_fail)
    before = open_descriptors()
    got, _ = run_all(square_with_pid, list(range(30)), workers=3)
    assert {k: v[0] for k, v in got.items()} == {k: k * k for k in range(30)}
    assert len({pid for _, pid in got.values()}) == 2 and len(forks) == 1
    assert open_descriptors() == before


@forking
def test_pipes_past_descriptor_1023_are_read():
    import resource
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("fewer than 1200 file descriptors allowed")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        got, _ = run_all(square_with_pid, list(range(20)))
    finally:
        for fd in held:
            os.close(fd)
    assert {k: v[0] for k, v in got.items()} == {k: k * k for k in range(20)}
    assert len({pid for _, pid in got.values()}) == 2


@forking
def test_a_process_that_ignores_sigchld_gets_its_results():
    before = open_descriptors()
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)    # the kernel reaps children
    try:
        got, _ = run_all(square_with_pid, list(range(20)), workers=3)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert {k: v[0] for k, v in got.items()} == {k: k * k for k in range(20)}
    assert open_descriptors() == before


@forking
def test_a_second_ctrl_c_while_reaping_still_kills_every_child(monkeypatch, tmp_path):
    parent, children = os.getpid(), []
    first = tmp_path / "first"

    class Recorded(pool_module._Child):
        def __init__(self, pid, fd):
            super().__init__(pid, fd)
            children.append(pid)

        def reap(self):
            if self.pid == children[0]:
                raise KeyboardInterrupt     # the second Ctrl-C, while reaping the first
            super().reap()

    def fn(x):
        if os.getpid() != parent:
            # once both children run (a Ctrl-C before the second fork leaves one child)
            (tmp_path / f"started-{os.getpid()}").touch()
            deadline = time.monotonic() + 30
            while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(first, os.O_CREAT | os.O_EXCL))
                os.kill(parent, signal.SIGINT)          # one Ctrl-C, from one child
            time.sleep(60)
        time.sleep(0.001)
        return x

    monkeypatch.setattr(pool_module, "_Child", Recorded)
    with pytest.raises(KeyboardInterrupt):
        run_all(fn, list(range(10_000)), workers=3)
    assert len(children) == 2
    os.waitpid(children[0], 0)                      # the one whose reaping was cut short
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("room", [0, 4096])
def test_a_pipe_too_small_for_the_queue_gives_fixed_shares(monkeypatch, room):
    # a user past the kernel's pipe-user-pages-soft gets one-page pipes; a full one
    # refuses the write outright: no queue then (fixed shares), and no descriptor left
    real_write = os.write

    def short_write(fd, data):
        if len(data) < 8_000:
            return real_write(fd, data)
        if room == 0:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_write(fd, data[:room])

    before = open_descriptors()
    monkeypatch.setattr(os, "write", short_write)
    assert pool_module._ticket_queue(3_000, first=1) is None
    monkeypatch.undo()
    assert open_descriptors() == before
