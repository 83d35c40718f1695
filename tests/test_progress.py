"""The numeric oracle's progress: every element counted once, in every method."""

import io
import sys

import numpy as np
import pytest

from cells.gru import GRU, GRUConfig
from gradcheck import progress
from gradcheck.finite_differences import numeric_gradient


class Recorder:
    """A display that keeps what it was told."""

    def __init__(self):
        self.tasks, self.done, self.finished = [], 0, 0

    def start(self, what, total):
        self.tasks.append((what, total))

    def update(self, n):
        self.done += n

    def finish(self):
        self.finished += 1


def case(**fields):
    cell = GRU(GRUConfig(**fields))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, 4, 2)


@pytest.mark.parametrize("method, fields", [
    ("batched", {}), ("central", {}), ("complex", {}),
    ("batched", dict(truncate=2)),                  # the truncation surrogate's own losses
    ("central", dict(truncate=2, truncation="tail")),
])
def test_every_differentiated_element_is_counted_once(method, fields):
    cell, params, batch = case(**fields)
    rng = np.random.default_rng(1)
    elements = {"U0": rng.random(params["U0"].shape) < 0.5, "W0": None}
    want = int(elements["U0"].sum()) + params["W0"].size
    shown = Recorder()
    with progress.showing(shown):
        got = numeric_gradient(cell, params, batch, ["U0", "W0"], method=method,
                               elements=elements, workers=2)
    assert shown.tasks == [("numeric oracle", want)] and shown.finished == 1
    assert shown.done == want == sum(int(np.isfinite(g.value).sum()) for g in got.values())


def test_nothing_is_counted_without_a_display_and_the_outer_one_comes_back():
    cell, params, batch = case()
    outer, inner = Recorder(), Recorder()
    with progress.showing(outer):
        with progress.showing(None):
            numeric_gradient(cell, params, batch, ["b0"])
        assert outer.tasks == [] and outer.done == 0
        with progress.showing(inner):
            numeric_gradient(cell, params, batch, ["b0"])
        numeric_gradient(cell, params, batch, ["c"])
    assert inner.done == params["b0"].size and outer.done == params["c"].size


def test_the_bar_draws_the_task_and_its_count():
    out = io.StringIO()
    bar = progress.TqdmBar(file=out, delay=0)
    with progress.showing(bar):
        cell, params, batch = case()
        numeric_gradient(cell, params, batch, ["U0"])
    text = out.getvalue()
    assert "numeric oracle" in text and f"/{params['U0'].size}" in text


def test_the_bar_starts_no_thread_so_the_passes_still_fork():
    import threading

    from gradcheck.probe_pool import can_fork
    before = threading.active_count()
    bar = progress.TqdmBar(file=io.StringIO(), delay=0)
    with progress.showing(bar):
        with progress.task("numeric oracle", 10):
            progress.advance(3)
            # no monitor thread, now or later (tqdm starts one per class, once)
            assert type(bar._bar).monitor_interval == 0
            assert threading.active_count() == before
            if before == 1 and sys.platform.startswith("linux"):
                assert can_fork()
