"""Working arrays reused between calls (cells.workspace): the same numbers, never an
array handed out twice at once, never a cache the caller keeps."""

import numpy as np
import pytest

from cells import workspace
from cells.gru import GRU, GRUConfig
from conftest import make_case


@pytest.fixture(autouse=True)
def reuse_every_size(monkeypatch):
    """The tests' arrays are small: reuse them all, as large ones are."""
    monkeypatch.setattr(workspace, "REUSE_BYTES", 0)


def fresh(cell, params, data):
    """loss_and_gradient with every array new (no workspace)."""
    with workspace.reusing_arrays(enabled=False):
        return cell._backprop_arrays(params, data, None)[:2]


def test_reused_arrays_give_the_same_numbers_as_fresh_ones(config):
    cell = GRU(config)
    mask = np.ones((5, 3))
    mask[3:, 1] = 0
    p1, data = make_case(cell, seed=1, mask=mask)
    p2, _ = make_case(cell, seed=2, mask=mask)
    want1, want2 = fresh(cell, p1, data), fresh(cell, p2, data)
    workspace.release()
    # alternate the two parameter sets: every call overwrites the previous call's arrays
    for params, (loss, grads) in [(p1, want1), (p2, want2), (p1, want1), (p2, want2)]:
        got_loss, got = cell.loss_and_gradient(params, data)
        assert got_loss == loss
        for k in grads:
            assert np.array_equal(got[k], grads[k]), k
        assert cell.loss(params, data) == loss


def test_a_forward_cache_the_caller_keeps_is_not_overwritten():
    # forward() outside the context hands out fresh arrays: a later call must not touch them
    cell = GRU(GRUConfig(hidden_size=6))
    p1, data = make_case(cell, seed=1)
    p2, _ = make_case(cell, seed=2)
    _, cache = cell.forward(p1, data)
    hs = cache["layers"][0]["states"].copy()
    cell.loss_and_gradient(p2, data)
    cell.loss(p2, data)
    assert np.array_equal(cache["layers"][0]["states"], hs)


def test_workspace_hands_out_the_same_memory_by_name():
    ws = workspace.Workspace(reuse=True)
    a = ws.empty("a", (4, 5))
    b = ws.empty("b", (4, 5))
    assert np.shares_memory(a, ws.empty("a", (2, 10)))       # same name: the same buffer
    assert not np.shares_memory(a, b)
    bigger = ws.empty("a", (100,))                              # grown: a new buffer
    assert bigger.shape == (100,) and not np.shares_memory(a, bigger)
    assert ws.empty("a", (3,), np.complex128).dtype == np.complex128
    assert ws.zeros("z", (3, 3)).sum() == 0.0
    once = workspace.Workspace(reuse=False)
    assert not np.shares_memory(once.empty("a", (4,)), once.empty("a", (4,)))


def test_nested_and_disabled_contexts_get_fresh_arrays():
    with workspace.reusing_arrays() as outer:
        assert workspace.active() is outer and outer.reuse
        with workspace.reusing_arrays() as inner:
            assert not inner.reuse                              # the outer call holds the buffers
        assert workspace.active() is outer
    assert not workspace.active().reuse
    with workspace.reusing_arrays(enabled=False) as off:
        assert not off.reuse


class MemoisingGRU(GRU):
    """Keeps its forward cache from one call to the next (as a zoo cell does)."""

    def forward(self, params, batch):
        key = params["V"].tobytes()
        if getattr(self, "_kept", (None,))[0] != key:
            self._kept = (key, super().forward(params, batch))
        return self._kept[1]


def test_a_cell_that_overrides_forward_gets_fresh_arrays():
    cell = MemoisingGRU(GRUConfig(hidden_size=6))
    assert not cell.losses_match_loss
    p1, data = make_case(cell, seed=1)
    p2, _ = make_case(cell, seed=2)
    loss1 = cell.loss(p1, data)
    _, cache1 = cell._kept[1]
    hs = cache1["layers"][0]["states"].copy()
    GRU(GRUConfig(hidden_size=6)).loss_and_gradient(p2, data)   # another cell, same thread
    assert np.array_equal(cache1["layers"][0]["states"], hs)
    assert cell.loss(p1, data) == loss1


@pytest.mark.parametrize("enabled", [True, False])
def test_reuse_is_what_the_context_says(enabled):
    # the check above is not vacuous: with reuse on, two calls share the layer's states
    cell = GRU(GRUConfig(hidden_size=6))
    p1, data = make_case(cell, seed=1)
    with workspace.reusing_arrays(enabled):
        _, c1 = cell.forward(p1, data)
        _, c2 = cell.forward(p1, data)
    assert np.shares_memory(c1["layers"][0]["states"], c2["layers"][0]["states"]) == enabled


def test_small_arrays_are_allocated_afresh(monkeypatch):
    monkeypatch.setattr(workspace, "REUSE_BYTES", 1 << 17)
    ws = workspace.Workspace(reuse=True)
    small = ws.empty("a", (100, 100))                           # 80,000 bytes
    assert not np.shares_memory(small, ws.empty("a", (100, 100)))
    large = ws.empty("b", (200, 100))                           # 160,000 bytes
    assert np.shares_memory(large, ws.empty("b", (200, 100)))


def test_buffers_past_the_limit_are_not_kept(monkeypatch):
    monkeypatch.setattr(workspace, "KEEP_LIMIT_BYTES", 1000)
    ws = workspace.Workspace(reuse=True)
    a = ws.empty("a", (100,))                                   # 800 bytes: kept
    assert np.shares_memory(a, ws.empty("a", (100,)))
    b = ws.empty("b", (50,))                                    # 800 + 400 > 1000: fresh
    assert not np.shares_memory(b, ws.empty("b", (50,)))
    c = ws.empty("a", (120,))                                   # regrown: 960 bytes, kept
    assert np.shares_memory(c, ws.empty("a", (120,)))
    d = ws.empty("a", (130,))                                   # 1040 bytes alone: fresh
    assert not np.shares_memory(d, ws.empty("a", (130,)))
