"""Speed modes of the numeric oracle: batched finite differences, the complex step,
and the directional ("fast") screen."""

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pytest

from cells import get_cell
from cells.gru import GRU, GRUConfig
from cells.lstm import LSTM, LSTMConfig
from cells.stacked import HARD_GATE_NOT_ANALYTIC, probe_stack
from cells.zoo.gru_bugs import BlogOutputMutatedGRU
from conftest import make_case
from gradcheck import check_gradients, function_cell
from gradcheck.directional import directional_check, random_directions
from gradcheck.finite_differences import (ComplexStepError, batched_central_differences,
                                          batched_complex_step, central_differences,
                                          complex_step, complex_step_refusal, numeric_gradient,
                                          numeric_loss)
from gradcheck.masks import make_mask

CELLS = [
    GRU(GRUConfig()),
    GRU(GRUConfig(reset="after", update="new", readout="mean")),
    GRU(GRUConfig(gate="hard", embedding=True, layers=2)),
    GRU(GRUConfig(gate="hard", reset="after", readout="mean", layers=2)),
    LSTM(LSTMConfig()),
    LSTM(LSTMConfig(gate="hard", embedding=True, layers=2, readout="mean")),
]
SMOOTH = [c for c in CELLS if c.supports_complex_step]


def cell_id(cell):
    c = cell.config
    return "-".join([cell.name, c.gate, c.readout, "emb" if c.embedding else "dense",
                     f"L{c.layers}"] + ([c.reset, c.update] if cell.name == "gru" else []))


def holey_case(cell, seed=0, steps=5, batch=3):
    """Seeded parameters and a batch whose mask has a hole followed by a kept step."""
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    mask = make_mask("random", rng, steps, batch)
    mask[1, 0], mask[2, 0] = 0, 1
    return params, cell.sample_batch(rng, steps, batch, mask)


def counted(cell):
    """(copy, calls): ``cell``'s class and config with its vectorised ``losses`` counted.

    The batched paths call ``losses`` once to see whether they may (the readiness
    probe), and fall back to the scalar loss when not: more than one call says the
    vectorised path ran (as tests/test_truncation.py asks of the surrogate's).  The
    calls are counted in a file, so that those of forked workers count too.
    """
    spy, pids = pid_recorded(cell, Path(tempfile.mkdtemp()) / "calls")
    return spy, CallCount(pids.path)


class CallCount:
    """``len()``: how many calls a ``pid_recorded`` cell made (in every process)."""

    def __init__(self, path):
        self.path = path
        weakref.finalize(self, shutil.rmtree, path.parent, True)

    def __len__(self):
        return len(self.path.read_text().split()) if self.path.exists() else 0


def pid_recorded(cell, path):
    """(copy, pids): ``cell`` whose ``losses`` appends its process id to ``path`` (one
    line a call), and ``pids()``, the distinct ids written there (seen across forks)."""
    original = type(cell).losses

    class Recorded(type(cell)):
        def losses(self, stacked, batch):
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\n")
            return original(self, stacked, batch)

    def pids():
        return set(path.read_text().split()) if path.exists() else set()

    pids.path = path
    return Recorded(cell.config), pids


def same(a, b):
    return all(np.array_equal(a[k].value, b[k].value) and np.array_equal(a[k].kinks, b[k].kinks)
               for k in a) and a.keys() == b.keys()


# ---------------------------------------------------------------- batched losses
@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
@pytest.mark.parametrize("mask", ["holey", "every step on"])
def test_losses_are_the_scalar_losses_to_the_bit(cell, mask):
    # "every step on": the readouts skip the mask's arithmetic
    params, batch = holey_case(cell, seed=2)
    if mask != "holey":
        batch = cell.sample_batch(np.random.default_rng(3), 5, 3, np.ones((5, 3)))
    rng = np.random.default_rng(0)
    for name in params:
        moved = params[name] + rng.normal(scale=1e-3, size=(4,) + params[name].shape)
        stack = {k: np.broadcast_to(v, (4,) + v.shape) for k, v in params.items()}
        stack[name] = moved
        want = [cell.loss({**params, name: m}, batch) for m in moved]
        assert cell.losses(stack, batch).tolist() == want, name


class GateBiasFromU(GRU):
    """A GRU whose step also adds U's first row to the gates' pre-activations: it reads U
    other than through h U, so its step 0 depends on U."""

    def _layer_step(self, l, params, h, xp_t, m_t, out=None, blocks=None):
        U = params[f"U{l}"]
        xp_rz, xp_h = xp_t
        xp_t = (xp_rz + U[..., :1, :2 * self.config.hidden_size], xp_h)
        return super()._layer_step(l, params, h, xp_t, m_t, out=out, blocks=blocks)


@pytest.mark.parametrize("reset", ["before", "after"])
def test_step_zero_is_computed_once_only_when_u_alone_differs(reset):
    # h_0 = 0 makes h_0 U = 0: with U alone stacked, step 0 is computed once for
    # every probe; anything else stacked (bn, or W through x W + b) and it is not
    cell = GRU(GRUConfig(reset=reset))
    params, batch = holey_case(cell)
    shared = {k: np.broadcast_to(v, (3,) + v.shape) for k, v in params.items()}

    def shares(**stacked):
        P, stack = probe_stack({**shared, **{k: np.stack([v] * 3) for k, v in stacked.items()}})
        x = cell.embed(stack, batch)
        g = cell._gate_columns()
        xp = [cell._project(x, stack["W0"][..., s], stack["b0"][..., s])
              for s in (slice(None, g), slice(g, None))]
        own = [stack[k] for k in ("U0", "bn0") if k in stack]
        return cell._first_step_shared(0, stack, *xp, own)

    assert shares(U0=params["U0"])
    assert not shares(W0=params["W0"]) and not shares(U0=params["U0"], W0=params["W0"])
    if reset == "after":
        assert not shares(U0=params["U0"], bn0=params["bn0"])
    # a subclass whose step reads U otherwise: its losses stay loss()'s (no step 0 shared)
    own_step = GateBiasFromU(cell.config)
    moved = params["U0"] + np.random.default_rng(1).normal(scale=1e-3,
                                                           size=(3,) + params["U0"].shape)
    want = [own_step.loss({**params, "U0": u}, batch) for u in moved]
    assert own_step.losses({**shared, "U0": moved}, batch).tolist() == want


# shapes where a product over all probes' rows or columns at once rounds differently
# from each probe's own (OpenBLAS edge kernels); the tests above happen to agree
ODD_SHAPES = [dict(input_size=3, hidden_size=8, classes=2, steps=1, batch=1),
              dict(input_size=3, hidden_size=17, classes=3, steps=3, batch=3),
              dict(input_size=17, hidden_size=17, classes=5, steps=3, batch=2),
              dict(input_size=16, hidden_size=32, classes=2, steps=5, batch=8)]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_losses_are_the_scalar_losses_to_the_bit_at_odd_shapes(kind, shape):
    shape = dict(shape)
    steps, batch_size = shape.pop("steps"), shape.pop("batch")
    cell = GRU(GRUConfig(**shape)) if kind == "gru" else LSTM(LSTMConfig(**shape))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, steps, batch_size)
    for name in params:
        for P in (2, 6, 13):
            moved = params[name] + rng.normal(scale=1e-3, size=(P,) + params[name].shape)
            stack = {k: np.broadcast_to(v, (P,) + v.shape) for k, v in params.items()}
            stack[name] = moved
            want = [cell.loss({**params, name: m}, batch) for m in moved]
            assert cell.losses(stack, batch).tolist() == want, (name, P)
    # and through the numeric oracle's own stacks, one element a pass and several
    scalar = central_differences(lambda p: cell.loss(p, batch), params)
    for chunk in (1, 5):
        assert same(scalar, batched_central_differences(cell, params, batch, chunk=chunk,
                                                        workers=1))


def test_probe_stack_needs_one_probe_axis():
    with pytest.raises(ValueError, match="same leading probe axis"):
        probe_stack({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    P, stack = probe_stack({"W": np.broadcast_to(np.ones((2, 3)), (5, 2, 3)),
                            "b": np.zeros((5, 3))})
    assert P == 5 and stack["W"].shape == (2, 3) and stack["b"].shape == (5, 1, 3)


# ------------------------------------------------------ batched central differences
@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_batched_equals_one_at_a_time(cell, chunk):
    params, batch = holey_case(cell)
    scalar = central_differences(lambda p: cell.loss(p, batch), params)
    spy, calls = counted(cell)
    batched = batched_central_differences(spy, params, batch, chunk=chunk)
    assert len(calls) > 1                                     # the vectorised path ran
    assert same(scalar, batched)


def test_batched_flags_the_same_kinks():
    # put an update gate's pre-activation at step 0 on the kink at +2.5 (column 6 is
    # block z, unit 1): perturbing its bias crosses it, and both paths must flag it
    cell = GRU(GRUConfig(gate="hard"))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 3, 1)
    params["b0"][6] = 2.5 - float(batch.x[0, 0] @ params["W0"][:, 6])
    scalar = central_differences(lambda p: cell.loss(p, batch), params)
    spy, calls = counted(cell)
    batched = batched_central_differences(spy, params, batch, chunk=4)
    assert len(calls) > 1
    assert scalar["b0"].kinks[6] and same(scalar, batched)


def test_batched_names_and_input_untouched():
    cell = CELLS[2]
    params, batch = make_case(cell)
    saved = {k: v.copy() for k, v in params.items()}
    spy, calls = counted(cell)
    out = batched_central_differences(spy, params, batch, names=["U1", "c"])
    assert len(calls) > 1
    assert list(out) == ["U1", "c"]
    assert same(out, central_differences(lambda p: cell.loss(p, batch), params, ["U1", "c"]))
    assert all(np.array_equal(params[k], saved[k]) for k in params)


def test_truncated_cells_take_the_surrogate_one_at_a_time():
    cell = GRU(GRUConfig(truncate=2, truncation="window"))
    params, batch = make_case(cell)
    want = central_differences(numeric_loss(cell, params, batch), params)
    assert same(numeric_gradient(cell, params, batch, method="batched"), want)


def test_cells_without_losses_fall_back():
    params = {"w": np.array([0.3, -1.2])}

    def loss(p, b):
        return float(np.sum(np.sin(p["w"]) * b.x.sum()))

    batch = make_case(GRU(GRUConfig()))[1]
    cell = function_cell(loss=loss, gradient=lambda p, b: {"w": np.cos(p["w"]) * b.x.sum()},
                         params=params)
    want = central_differences(lambda p: loss(p, batch), params)
    assert same(batched_central_differences(cell, params, batch), want)


def test_a_cell_that_overrides_the_forward_pass_falls_back():
    # this broken cell computes its loss its own way (through a forward cache): the
    # parent's vectorised losses are not its function, so the scalar path runs
    cell = BlogOutputMutatedGRU(GRUConfig())
    assert not cell.losses_match_loss and GRU(GRUConfig()).losses_match_loss
    params, batch = make_case(cell)
    want = central_differences(lambda p: cell.loss(p, batch), params)
    assert same(batched_central_differences(cell, params, batch), want)


def test_a_loss_that_is_not_a_function_of_its_inputs_falls_back():
    # a loss that changes between calls: the vectorised loss at the unperturbed
    # point is not the scalar one, so the scalar path runs
    class Drifting(GRU):
        calls = 0

        def losses(self, params, batch):
            Drifting.calls += 1
            return super().losses(params, batch) + 1e-9 * Drifting.calls

    cell = Drifting(GRUConfig())
    params, batch = make_case(cell)
    want = central_differences(lambda p: cell.loss(p, batch), params)
    assert same(batched_central_differences(cell, params, batch), want)
    assert Drifting.calls == 1


# ------------------------------------------------------------------ complex step
def rel_err(a, b):
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)


@pytest.mark.parametrize("cell", SMOOTH, ids=cell_id)
def test_complex_step_is_exact_to_rounding(cell):
    params, batch = holey_case(cell, seed=1)
    analytic = cell.gradient(params, batch)
    numeric = batched_complex_step(cell, params, batch)
    central = central_differences(lambda p: cell.loss(p, batch), params)
    for name, g in analytic.items():
        cs = numeric[name].value
        # |cs - g| <= 1e-13 max(|cs|, |g|), apart from rounding of gradients near zero
        assert np.all(np.abs(cs - g) <= 1e-13 * np.maximum(np.abs(cs), np.abs(g)) + 1e-16), name
        assert np.allclose(cs, central[name].value, rtol=1e-6, atol=1e-9), name
        assert not numeric[name].kinks.any()


def test_scalar_and_batched_complex_step_agree():
    cell = SMOOTH[1]
    params, batch = make_case(cell)
    a = complex_step(lambda p: cell.loss(p, batch), params)
    spy, calls = counted(cell)
    b = batched_complex_step(spy, params, batch, chunk=5)
    assert len(calls) > 1
    for name in a:
        assert np.max(rel_err(a[name].value, b[name].value)) < 1e-13, name


def test_complex_step_through_the_truncation_surrogate():
    cell = LSTM(LSTMConfig(truncate=2, truncation="tail"))
    params, batch = make_case(cell)
    numeric = numeric_gradient(cell, params, batch, method="complex")
    analytic = cell.gradient(params, batch)
    assert all(np.allclose(numeric[k].value, analytic[k], rtol=1e-12, atol=1e-15) for k in analytic)


@pytest.mark.parametrize("cls, config", [(GRU, GRUConfig), (LSTM, LSTMConfig)])
def test_complex_step_refuses_the_hard_sigmoid(cls, config):
    cell = cls(config(gate="hard"))
    params, batch = make_case(cell)
    assert not cell.supports_complex_step
    assert complex_step_refusal(cell) == HARD_GATE_NOT_ANALYTIC
    with pytest.raises(ComplexStepError, match="the hard sigmoid's clip is not"):
        numeric_gradient(cell, params, batch, method="complex")
    with pytest.raises(ComplexStepError, match="the hard sigmoid's clip is not"):
        directional_check(cell, params, batch, cell.gradient(params, batch), method="complex")


def test_complex_step_refuses_undeclared_cells_and_real_losses():
    params = {"w": np.array([0.3])}
    cell = function_cell(loss=lambda p, b: float(np.sum(p["w"] ** 2)),
                         gradient=lambda p, b: {"w": 2 * p["w"]}, params=params)
    assert "does not declare supports_complex_step" in complex_step_refusal(cell)
    with pytest.raises(ComplexStepError, match="does not declare"):
        batched_complex_step(cell, params, None)
    with pytest.raises(ComplexStepError, match="not complex-safe"):
        complex_step(lambda p: float(np.real(np.sum(p["w"] ** 2))), params)


def test_unknown_numeric_method():
    cell = CELLS[0]
    params, batch = make_case(cell)
    with pytest.raises(ValueError,
                       match="numeric method 'fast' is not one of central, batched, complex"):
        numeric_gradient(cell, params, batch, method="fast")


# --------------------------------------------------------------- directional mode
# the configuration each broken GRU needs to be visible (see tests/test_zoo.py)
BUG_CONFIGS = {
    "reset-gate-derivative": {},
    "wrapped-time-index": {"layers": 2},
    "elementwise-product": {},
    "off-by-one-window": {"truncate": 2, "truncation": "window"},
    "mask-ignored-in-backward": {"layers": 2, "holes": True},
    "blog-reset-delta": {},
    "blog-state-adjoint-order": {},
    "blog-output-delta-every-layer": {"layers": 2},
    "blog-hard-sigmoid-slope": {"gate": "hard"},
    "blog-embedding-word": {"embedding": True, "layers": 2},
    "blog-empty-loop": {},
}


def bug_case(bug, seed):
    config = dict(BUG_CONFIGS[bug])
    holes = config.pop("holes", False)
    cell = get_cell("gru").make(GRUConfig(**config), bug)
    params, batch = holey_case(cell, seed) if holes else make_case(cell, seed)
    return cell, params, batch


def test_every_bug_in_the_zoo_has_a_configuration():
    assert set(BUG_CONFIGS) | {"blog-output-mutated"} == set(get_cell("gru").broken())


@pytest.mark.parametrize("bug", sorted(BUG_CONFIGS))
@pytest.mark.parametrize("method, kind", [("central", "gaussian"), ("central", "rademacher"),
                                          ("complex", "gaussian")])
def test_directional_catches_what_the_exact_check_catches(bug, method, kind):
    for seed in range(3):
        cell, params, batch = bug_case(bug, seed)
        if method == "complex" and not cell.supports_complex_step:
            pytest.skip("hard gates: no complex step")
        exact = check_gradients(cell, params, batch, oracles="analytic,numeric", localise=False)
        exact_failing = {c.parameter for c in exact.comparisons if not c.passed}
        assert exact_failing, (bug, seed)
        fast = directional_check(cell, params, batch, cell.gradient(params, batch),
                                 method=method, kind=kind, seed=seed)
        assert set(fast.fallback()) & exact_failing, (bug, seed, fast.summary())
        assert set(fast.fallback()) <= exact_failing, (bug, seed, fast.summary())
        assert fast.summary().startswith("fail:")


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("method", ["batched", "central", "complex"])
def test_output_mutated_is_caught_before_any_numeric_oracle(mode, method):
    # this bug leaves the gradient right and corrupts the next loss instead; the
    # harness's determinism check (loss, gradient, loss again) catches it in both modes,
    # with central differences batched or one at a time, and with the complex step (its
    # loss is complex-safe, so the complex step's guard lets it through to the check)
    probe = BlogOutputMutatedGRU(GRUConfig())
    params, batch = make_case(probe)
    before = probe.loss(params, batch)
    probe.loss_and_gradient(params, batch)
    assert probe.loss(params, batch) != before
    r = check_gradients(BlogOutputMutatedGRU(GRUConfig()), params, batch,
                        oracles="analytic,numeric", mode=mode, numeric_method=method,
                        localise=False)
    assert not r.passed
    assert r.defects and "loss is not a function of its inputs" in r.defects[0], r.summary()
    assert r.summary().startswith("fail: the cell's loss is not a function of its inputs")


GOOD = [GRU(GRUConfig(**v)) for v in (
    {}, {"reset": "after", "update": "new", "readout": "mean"},
    {"gate": "hard", "embedding": True, "layers": 2},
    {"gate": "hard", "reset": "after", "layers": 2, "readout": "mean", "embedding": True},
    {"truncate": 2, "truncation": "window", "layers": 2},
    {"truncate": 2, "truncation": "tail", "gate": "hard"},
)] + [LSTM(LSTMConfig(**v)) for v in (
    {}, {"gate": "hard", "embedding": True, "layers": 2, "readout": "mean"},
    {"truncate": 3, "truncation": "window"},
)]


@pytest.mark.parametrize("cell", GOOD, ids=lambda c: f"{cell_id(c)}-{c.truncation.describe()}")
def test_directional_passes_on_correct_cells(cell):
    for seed in range(3):
        params, batch = holey_case(cell, seed)
        g = cell.gradient(params, batch)
        methods = ("central", "complex") if cell.supports_complex_step else ("central",)
        for method in methods:
            for kind in ("gaussian", "rademacher"):
                r = directional_check(cell, params, batch, g, method=method, kind=kind, seed=seed)
                assert r.passed, r.summary()


def test_directional_result_names_blocks_and_is_seeded():
    cell = get_cell("gru").make(GRUConfig(), "reset-gate-derivative")
    params, batch = make_case(cell)
    g = cell.gradient(params, batch)
    a = directional_check(cell, params, batch, g, directions=3, seed=5)
    b = directional_check(cell, params, batch, g, directions=3, seed=5)
    assert a.as_dict() == b.as_dict()
    assert a.probes == 2 * 3 * 11 + 1           # W0, U0, b0 in 3 blocks, V, c; +-; f0
    failing_blocks = {(c.parameter, c.block) for c in a.checks if not c.passed}
    assert ("U0", "r") in failing_blocks and ("V", None) not in failing_blocks
    assert "U0 (block r)" in a.summary()
    assert a.fallback() == a.failing()


def test_random_directions():
    cell = CELLS[0]
    params, _ = make_case(cell)
    dirs = random_directions(cell.param_specs(), params, directions=2, kind="rademacher")
    assert len(dirs) == 2 * 11
    d = dirs[0]
    assert d.parameter == "W0" and d.block == "r"
    assert set(np.unique(d.vector)) == {-1.0, 0.0, 1.0}
    assert not d.vector[:, 5:].any()
    with pytest.raises(ValueError, match="direction kind 'uniform'"):
        random_directions(cell.param_specs(), params, kind="uniform")


# ----------------------------------------------- drop-in for check_gradients' call
def test_sampled_elements_and_partial_results_match_the_scalar_path():
    cell = CELLS[1]
    params, batch = holey_case(cell)
    rng = np.random.default_rng(3)
    elements = {"U0": rng.random(params["U0"].shape) < 0.2, "c": None}
    done = {}
    spy, calls = counted(cell)
    got = numeric_gradient(spy, params, batch, ["U0", "c"], elements=elements, out=done)
    assert len(calls) > 1
    want = central_differences(lambda p: cell.loss(p, batch), params, ["U0", "c"],
                               elements=elements)
    assert done is got and list(done) == ["U0", "c"]
    for name in want:
        assert np.array_equal(got[name].value, want[name].value, equal_nan=True), name
        assert np.array_equal(got[name].kinks, want[name].kinks), name
    assert np.isnan(got["U0"].value[~elements["U0"]]).all()
    cs = numeric_gradient(cell, params, batch, ["U0"], method="complex", elements=elements)
    assert np.array_equal(np.isnan(cs["U0"].value), ~elements["U0"])


def test_fortran_ordered_parameters():
    cell = CELLS[0]
    params, batch = make_case(cell)
    fortran = {k: np.asfortranarray(v) for k, v in params.items()}
    spy, calls = counted(cell)
    assert same(batched_central_differences(spy, fortran, batch),
                central_differences(lambda p: cell.loss(p, batch), params))
    assert len(calls) > 1


# ------------------------------------------------------------- process memory
def test_keeping_freed_memory_changes_no_number():
    import platform
    import subprocess
    import sys
    # in a new process, so that this test process keeps glibc's defaults
    code = """
import sys, numpy as np
from cells.gru import GRU, GRUConfig
from gradcheck.process_memory import keep_freed_memory
cell = GRU(GRUConfig(input_size=64, hidden_size=128, reset="after"))
rng = np.random.default_rng(0)
params = cell.init_params(rng)
batch = cell.sample_batch(rng, 30, 16)
before = cell.loss_and_gradient(params, batch)
kept = keep_freed_memory()
after = cell.loss_and_gradient(params, batch)
same = before[0] == after[0] and all(np.array_equal(before[1][k], after[1][k]) for k in params)
print(kept, same)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kept, same = done.stdout.split()
    assert same == "True"
    if platform.libc_ver()[0] == "glibc":
        assert kept == "True"       # elsewhere it is allowed to decline


# ------------------------------------------------- worker threads and processes
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("cell", [CELLS[0], CELLS[3], CELLS[4]], ids=cell_id)
def test_workers_give_the_same_numbers(cell, processes, tmp_path, monkeypatch):
    from gradcheck import probe_pool
    if processes and not probe_pool.can_fork():
        pytest.skip("forked workers need Linux and one thread")
    # fixed shares, so that every process runs passes (from the shared queue, a child
    # started late may find it empty), and a fork for these few milliseconds of work
    monkeypatch.setattr(probe_pool, "_ticket_queue", lambda count, first: None)
    monkeypatch.setattr(probe_pool, "FORK_WORTH_SECONDS", 0.0)
    params, batch = holey_case(cell, seed=3)
    one = batched_central_differences(cell, params, batch, chunk=3, workers=1)
    spy, pids = pid_recorded(cell, tmp_path / "pids")
    three = batched_central_differences(spy, params, batch, chunk=3, workers=3,
                                        processes=processes)
    assert same(one, three)
    # the passes ran in the pool: in this process only (threads), or in three
    assert len(pids()) == (3 if processes else 1)
    if cell.supports_complex_step:
        spy, pids = pid_recorded(cell, tmp_path / "complex-pids")
        assert same(batched_complex_step(cell, params, batch, chunk=2, workers=1),
                    batched_complex_step(spy, params, batch, chunk=2, workers=3,
                                         processes=processes))
        assert len(pids()) == (3 if processes else 1)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(workers):
    from gradcheck.finite_differences import probe_workers
    with pytest.raises(ValueError, match=f"workers={workers!r} must be a positive integer"):
        probe_workers(workers)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_a_worker_reaches_the_caller_and_stops_the_rest(error):
    cell = CELLS[0]
    params, batch = make_case(cell)
    calls = {"n": 0}
    original = type(cell).losses

    class Failing(type(cell)):
        def losses(self, stacked, batch):
            calls["n"] += 1
            if calls["n"] == 4:         # the readiness probe, then the third pass
                raise error("in a pass")
            return original(self, stacked, batch)

    failing = Failing(cell.config)
    with pytest.raises(error):
        batched_central_differences(failing, params, batch, chunk=1, workers=2, processes=False)
    total = sum(v.size for v in params.values())
    assert calls["n"] < total           # the passes not yet started were cancelled


def test_without_threadpoolctl_the_passes_run_on_one_thread(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError("no threadpoolctl here")
        if name == "concurrent.futures":                          # a pool would fail loudly
            raise AssertionError("a thread pool")
        return real_import(name, *args, **kwargs)

    def no_fork():
        raise AssertionError("forked")

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    monkeypatch.setattr(os, "fork", no_fork)
    cell = CELLS[0]
    params, batch = make_case(cell)
    # threads asked for (a fork would be refused too): one thread all the same
    got = batched_central_differences(cell, params, batch, chunk=2, workers=2, processes=False)
    monkeypatch.undo()
    assert same(got, batched_central_differences(cell, params, batch, chunk=2, workers=1))


def test_a_large_parameter_is_perturbed_in_passes_that_fit_the_byte_budget():
    from gradcheck.finite_differences import STACK_BYTES
    cell = GRU(GRUConfig(input_size=3000, hidden_size=8))     # W0: 3000 x 24, 576 KB
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 3, 2)
    seen = []
    original = type(cell).losses

    class Spy(type(cell)):
        def losses(self, stacked, batch):
            seen.append(stacked["W0"].strides[0] and stacked["W0"].shape[0])   # 0: shared
            return original(self, stacked, batch)

    chosen = np.zeros(params["W0"].shape, dtype=bool)
    chosen.reshape(-1)[:128] = True
    batched_central_differences(Spy(cell.config), params, batch, names=["W0"],
                                elements={"W0": chosen}, workers=2, processes=False)
    moved = [p for p in seen if p][1:]                  # after the readiness probe (2 copies)
    assert sum(moved) == 2 * 128
    assert max(moved) * params["W0"].nbytes <= STACK_BYTES


def test_an_embedding_is_looked_up_per_probe_without_copies():
    from gradcheck.perturbed_rows import PerturbedRows
    rng = np.random.default_rng(0)
    E = rng.normal(size=(6, 3))
    ids = np.array([[0, 5, 5], [2, 0, 1]])              # repeated ids, unused rows 3 and 4
    rows, cols = np.array([5, 3, 0, 0]), np.array([1, 2, 0, 2])
    for values in (rng.normal(size=4), E[rows, cols] + 1e-20j):
        copies = np.broadcast_to(E, (4,) + E.shape).astype(values.dtype)
        copies[np.arange(4), rows, cols] = values
        looked_up = PerturbedRows(E, rows, cols, values)[..., ids, :]
        assert looked_up.dtype == values.dtype and np.array_equal(looked_up, copies[..., ids, :])
    with pytest.raises(TypeError, match="supports"):
        PerturbedRows(E, rows, cols, values)[0]


def test_a_large_embedding_reaches_the_cell_as_perturbed_rows():
    from gradcheck.perturbed_rows import PerturbedRows
    cell = GRU(GRUConfig(embedding=True, vocab=10000, input_size=64, hidden_size=4))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 3, 2)
    kinds = set()
    original = type(cell).losses

    class Spy(type(cell)):
        def losses(self, stacked, batch):
            kinds.add(type(stacked["E"]).__name__)
            return original(self, stacked, batch)

    used = np.zeros(params["E"].shape, dtype=bool)
    used[np.unique(batch.x)] = True
    got = batched_central_differences(Spy(cell.config), params, batch, names=["E"],
                                      elements={"E": used})
    assert kinds == {PerturbedRows.__name__}
    want = central_differences(lambda p: cell.loss(p, batch), params, ["E"], elements={"E": used})
    # the same numbers as one copy at a time, to the bit (NaN: elements not asked for)
    assert np.array_equal(got["E"].value, want["E"].value, equal_nan=True)
    assert np.isfinite(got["E"].value[used]).all() and np.isnan(got["E"].value[~used]).all()


def test_a_parameter_already_in_out_keeps_its_place():
    # as central_differences leaves it: a name already in ``out`` is overwritten in place
    cell = CELLS[0]
    params, batch = make_case(cell)
    for differences in (central_differences, batched_central_differences):
        out = {"earlier": None, "U0": None}
        loss = (lambda p: cell.loss(p, batch)) if differences is central_differences else None
        if loss is None:
            differences(cell, params, batch, ["c", "U0", "b0"], out=out)
        else:
            differences(loss, params, ["c", "U0", "b0"], out=out)
        assert list(out) == ["earlier", "U0", "c", "b0"], differences.__name__
