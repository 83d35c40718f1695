"""The compiled gate kernels (cells/_gate_kernels.c) against the NumPy steps they stand
in for: the same numbers to the last bit, arrays that do not fit refused untouched, and
the GRU step really handing its arithmetic to them."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cells import gate_kernels
from cells.gru import GRU, GRUConfig
from cells.lstm import LSTM, LSTMConfig
from gradcheck.masks import make_mask

needs_kernels = pytest.mark.skipif(
    gate_kernels.KERNELS is None,
    reason=gate_kernels.status())


def test_the_install_built_the_kernels():
    # where a C compiler is, `pip install .` builds them: a silent fallback would only
    # show as a slower check
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not gate_kernels.BUILT and not shutil.which(compiler):
        pytest.skip("no C compiler: the install could not build the kernels")
    assert gate_kernels.BUILT, gate_kernels.status()


def test_status_names_the_state():
    assert gate_kernels.status().startswith("compiled gate kernels: ")
    with gate_kernels.disabled():
        assert gate_kernels.KERNELS is None
        assert "on" not in gate_kernels.status().split(": ")[1]


# ---------------------------------------------------------------- one step
def step_both_ways(cell, l, params, h, xp, m_t, out):
    """``_layer_step`` with the kernels and without: (h_t, cache) each, on copies of
    the arrays it writes into."""
    got = []
    for kernels in (True, False):
        bufs = None if out is None else tuple(None if b is None else b.copy() for b in out)
        if kernels:
            got.append(cell._layer_step(l, params, h, xp, m_t, out=bufs))
        else:
            with gate_kernels.disabled():
                got.append(cell._layer_step(l, params, h, xp, m_t, out=bufs))
    return got


def assert_same_bits(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.array_equal(a.view(np.uint64), b.view(np.uint64)), (
        f"{what}: {np.sum(a != b)} of {a.size} elements differ, worst |diff| "
        f"{np.max(np.abs(a - b)):.3g}")


@needs_kernels
@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["gru", "lstm"]), gate=st.sampled_from(["sigmoid", "hard"]),
       probes=st.integers(0, 7), batch=st.integers(1, 9),
       hidden=st.integers(1, 40), reset=st.sampled_from(["before", "after"]),
       update=st.sampled_from(["old", "new"]), probed=st.sampled_from(["U", "W", "bn", "h"]),
       masked=st.booleans(), in_place=st.booleans(), scale=st.sampled_from([0.5, 3.0, 40.0]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_a_step_is_the_numpy_step_to_the_bit(kind, gate, probes, batch, hidden, reset, update,
                                             probed, masked, in_place, scale, seed):
    if kind == "gru":
        cell = GRU(GRUConfig(input_size=3, hidden_size=hidden, reset=reset, update=update,
                             gate=gate))
    else:
        cell = LSTM(LSTMConfig(input_size=3, hidden_size=hidden, gate=gate))
    rng = np.random.default_rng(seed)
    params = {k: v * scale for k, v in cell.init_params(rng).items()}
    H, B, P = hidden, batch, probes
    lead = (P,) if P else ()
    gates, state = cell._gate_columns(), cell._state_width()

    def draw(shape, probe):
        return rng.normal(scale=scale, size=(lead if probe else ()) + shape)

    # the state entering the step has the probe axis whenever a parameter has
    s = draw((B, state), probed == "h" or (P and probed in ("U", "bn", "W")))
    if P and probed == "U":
        params["U0"] = params["U0"] + draw(params["U0"].shape, True) * 1e-3
    if P and probed == "bn" and "bn0" in params:
        params["bn0"] = (params["bn0"] + draw((H,), True) * 1e-3)[:, None, :]
    xp = (draw((B, gates), probed == "W"), draw((B, H), probed == "W"))
    m_t = make_mask("random", rng, 1, B)[0] if masked else None
    out = None
    if in_place:    # what _layer_forward hands the step: (a, gates, ..., state out)
        out = tuple(np.empty(lead + (B, width)) if needed else None
                    for _, width, needed in cell._step_arrays()) + (np.empty(lead + (B, state)),)
    with np.errstate(over="ignore"):
        (s_k, cache_k), (s_n, cache_n) = step_both_ways(cell, 0, params, s, xp, m_t, out)
    assert_same_bits(s_k, s_n, "state")
    names = [name for name, _, _ in cell._step_arrays()] + ["mask"]
    for name, a, b in zip(names, cache_k, cache_n):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_same_bits(a, b, name)


@needs_kernels
@pytest.mark.parametrize("config", [
    dict(),
    dict(reset="after"),
    dict(gate="hard", reset="after"),
    dict(reset="after", update="new", readout="mean"),
    dict(layers=2, embedding=True),
    dict(reset="after", layers=2, truncate=3),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("mask", ["none", "random"])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_losses_and_gradients_are_the_numpy_ones_to_the_bit(kind, config, mask):
    if kind == "lstm":
        config = {k: v for k, v in config.items() if k not in ("reset", "update")}
    cls, config_class = (GRU, GRUConfig) if kind == "gru" else (LSTM, LSTMConfig)
    cell = cls(config_class(input_size=5, hidden_size=7, **config))
    rng = np.random.default_rng(3)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 6, 4, make_mask(mask, rng, 6, 4))
    name = "U0"
    P = 5
    stack = {k: np.broadcast_to(v, (P,) + v.shape) for k, v in params.items()}
    stack[name] = params[name] + rng.normal(scale=1e-3, size=(P,) + params[name].shape)

    def run():
        losses = cell.losses(stack, batch) if cell.config.truncate == -1 else None
        return cell.loss(params, batch), cell.gradient(params, batch), losses

    loss_k, grad_k, losses_k = run()
    with gate_kernels.disabled():
        loss_n, grad_n, losses_n = run()
    assert_same_bits(loss_k, loss_n, "loss")
    for k in grad_n:
        assert_same_bits(grad_k[k], grad_n[k], f"dL/d{k}")
    if losses_n is not None:
        assert_same_bits(losses_k, losses_n, "losses")


# ---------------------------------------------------------------- the backward step
def rule_by_rule(monkeypatch):
    """Every layer's backward pass step by step, rule by rule (as large layers run it)."""
    import cells.gru
    monkeypatch.setattr(cells.gru, "LINEAR_BYTES", -1)


def gradients_both_ways(cell, params, batch):
    with_kernels = cell.gradient(params, batch)
    with gate_kernels.disabled():
        without = cell.gradient(params, batch)
    return with_kernels, without


@needs_kernels
@pytest.mark.parametrize("config", [
    dict(), dict(update="new"), dict(layers=2, embedding=True), dict(readout="mean"),
    dict(hidden_size=13, input_size=3),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("mask", ["none", "random", "lengths"])
def test_the_backward_step_is_the_numpy_one_to_the_bit(monkeypatch, config, mask):
    rule_by_rule(monkeypatch)
    cell = GRU(GRUConfig(**{"input_size": 5, "hidden_size": 7, "reset": "after", **config}))
    rng = np.random.default_rng(11)
    params = {k: 3.0 * v for k, v in cell.init_params(rng).items()}   # gates near saturation too
    batch = cell.sample_batch(rng, 6, 4, make_mask(mask, rng, 6, 4))
    got, want = gradients_both_ways(cell, params, batch)
    for k in want:
        assert_same_bits(got[k], want[k], f"dL/d{k}")


@needs_kernels
def test_a_broken_cell_keeps_its_broken_backward_step(monkeypatch):
    # each GRU of the zoo whose bug lives in a rule the backward kernel would compute
    # (the gate slope, the reset gate's delta) must get its own wrong gradient, not the
    # kernel's right one
    from cells.zoo import gru_bugs
    rule_by_rule(monkeypatch)
    rng = np.random.default_rng(2)

    class NoResetSlope(GRU):        # reset "after": dL/da_r without the gate's slope
        def _reset_gate_delta(self, da_h, h, q, U, slope_r):
            if q is None:
                return super()._reset_gate_delta(da_h, h, q, U, slope_r)
            return da_h * q

    class TanhSlopeFromInput(GRU):  # 1 - a^2 where 1 - n^2 belongs
        def _step_slopes(self, a_rz, rz, n, h):
            gp, tg, h_minus_n = super()._step_slopes(a_rz, rz, n, h)
            return gp, 1.0 - np.arctanh(np.clip(n, -0.999, 0.999)) ** 2, h_minus_n

    caught = 0
    for cls in (gru_bugs.ResetGateMissingDerivativeGRU, gru_bugs.BlogResetDeltaGRU,
                gru_bugs.BlogHardSigmoidSlopeGRU, gru_bugs.ElementwiseProductGRU,
                NoResetSlope, TanhSlopeFromInput):
        gate = "hard" if cls is gru_bugs.BlogHardSigmoidSlopeGRU else "sigmoid"
        for reset in ("after", "before"):
            cell = cls(GRUConfig(input_size=4, hidden_size=5, reset=reset, gate=gate))
            params = cell.init_params(rng)
            batch = cell.sample_batch(rng, 5, 3)
            got, want = gradients_both_ways(cell, params, batch)
            right = GRU(cell.config).gradient(params, batch)
            for k in want:
                assert_same_bits(got[k], want[k], f"{cls.__name__} reset={reset}: dL/d{k}")
            caught += any(not np.allclose(want[k], right[k]) for k in want)
    assert caught >= 6          # the bugs are live in these configurations


# ---------------------------------------------------------------- refusals
@needs_kernels
@pytest.mark.parametrize("bad", ["float32", "complex", "strided rows", "probe axis too many",
                                 "1-D output", "not an array"])
def test_an_unfit_array_is_refused_and_nothing_written(bad):
    K = gate_kernels.KERNELS
    rng = np.random.default_rng(0)
    P, B, H = 3, 4, 5
    a = rng.normal(size=(P, B, 2 * H))
    x = rng.normal(size=(B, 2 * H))
    if bad == "float32":
        a = a.astype(np.float32)
    elif bad == "complex":
        x = x + 0j
    elif bad == "strided rows":
        x = rng.normal(size=(B, 4 * H))[:, ::2]
    elif bad == "probe axis too many":
        a, x = a[0], rng.normal(size=(P, B, 2 * H))
    elif bad == "1-D output":
        a = a[0, 0]
    elif bad == "not an array":
        x = x.tolist()
    before = a.copy()
    assert K.sigmoid_of_sum(a, x) is False
    assert np.array_equal(a, before)
    # the candidate kernel refuses on the same grounds
    rz = rng.normal(size=(P, B, 2 * H))
    n, h_out = np.zeros((P, B, H)), np.zeros((P, B, H))
    h = rng.normal(size=(P, B, H)).astype(np.float32) if bad == "float32" else \
        rng.normal(size=(P, B, H))
    xh = x[..., :H] if bad != "not an array" else x
    args = (rz, None, None, xh, h, None, n, h_out, True)
    if bad in ("float32", "complex", "strided rows", "not an array"):
        assert K.gru_candidate(*args) is False
        assert not n.any() and not h_out.any()
    assert K.gru_candidate(rz, None, None, rng.normal(size=(B, H)), h,
                           rng.normal(size=(B + 1,)), n, h_out, True) is False   # mask of B + 1
    assert not n.any() and not h_out.any()


@needs_kernels
def test_the_gru_step_hands_its_arithmetic_to_the_kernels(monkeypatch):
    calls = []

    class Counted:
        def __getattr__(self, name):
            kernel = getattr(gate_kernels.KERNELS_BUILT, name)

            def counted(*args):
                done = kernel(*args)
                calls.append((name, done))
                return done
            return counted

    monkeypatch.setattr(gate_kernels, "KERNELS_BUILT", gate_kernels.KERNELS, raising=False)
    monkeypatch.setattr(gate_kernels, "KERNELS", Counted())
    rng = np.random.default_rng(0)
    for cell, gates, candidate in [
            (GRU(GRUConfig()), "sigmoid_of_sum", "gru_candidate"),
            (GRU(GRUConfig(reset="after")), "sigmoid_of_sum", "gru_candidate"),
            (LSTM(LSTMConfig()), "sigmoid_of_sum", "lstm_candidate"),
            (GRU(GRUConfig(gate="hard")), "hard_sigmoid_of_sum", "gru_candidate"),
            (LSTM(LSTMConfig(gate="hard")), "hard_sigmoid_of_sum", "lstm_candidate")]:
        params = cell.init_params(rng)
        batch = cell.sample_batch(rng, 4, 3)
        calls.clear()
        cell.loss(params, batch)
        assert calls == [(gates, True), (candidate, True)] * 4, cell.config
    # a gate function of a subclass's own: its gates in NumPy, the candidate compiled
    for gate in ("sigmoid", "hard"):
        cell = GRU(GRUConfig(gate=gate))
        cell.gate = lambda a, out=None: np.tanh(a, out=out)
        calls.clear()
        cell.loss(cell.init_params(rng), cell.sample_batch(rng, 4, 3))
        assert calls == [("gru_candidate", True)] * 4, gate
    # the backward step, where the layer runs it rule by rule
    rule_by_rule(monkeypatch)
    cell = GRU(GRUConfig(reset="after"))
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 4, 3)
    calls.clear()
    cell.gradient(params, batch)
    assert calls.count(("gru_backward_after", True)) == 4
    # the complex step's complex arrays are refused, and the NumPy step runs
    cell = GRU(GRUConfig())
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 4, 3)
    calls.clear()
    cell.loss({**params, "U0": params["U0"] + 1e-20j}, batch)
    assert calls and all(done is False for _, done in calls)


@pytest.mark.parametrize("value, on", [("0", False), ("1", True)])
def test_the_environment_turns_them_off(value, on, tmp_path):
    code = "from cells import gate_kernels as g; print(g.KERNELS is not None, g.status())"
    # the cells package this process imported (installed, or the source tree on the path)
    where = str(Path(gate_kernels.__file__).resolve().parents[1])
    env = dict(os.environ, GRADCHECK_KERNELS=value, PYTHONPATH=where)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    running, status = done.stdout.strip().split(" ", 1)
    assert running == str(on and gate_kernels.BUILT)
    if not on and gate_kernels.BUILT:
        assert status == "compiled gate kernels: off, by GRADCHECK_KERNELS=0"


# ---------------------------------------------------------------- the probe passes' loop
def _probe_losses_and_scalar_losses(cell, name, rng, P=4, mask="random", before=None,
                                    imaginary=0.0):
    """A pass's losses of P probes moving ``name``, and loss() of each probe (computed
    first; then ``before()``, when given, then the pass).  ``imaginary``: the probes'
    moves get this imaginary part too (a complex step)."""
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3, make_mask(mask, rng, 5, 3))
    stack = {k: np.broadcast_to(v, (P,) + v.shape) for k, v in params.items()}
    stack[name] = params[name] + rng.normal(scale=1e-3, size=(P,) + params[name].shape)
    if imaginary:
        stack[name] = stack[name] + 1j * imaginary
    scalar = np.array([cell.loss({**params, name: stack[name][p]}, batch) for p in range(P)])
    if before is not None:
        before()
    return cell.losses(stack, batch), scalar


@needs_kernels
@pytest.mark.parametrize("name, step_calls", [("W0", 0), ("U0", 1), ("bn0", 0), ("b0", 0)])
def test_a_pass_steps_the_reference_gru_without_its_layer_step(monkeypatch, name, step_calls):
    # the loop of a vectorised pass makes the kernel path's calls itself; only step 0 of
    # a pass moving U alone, computed once for every probe, goes through _layer_step
    calls = []
    original = GRU._layer_step
    monkeypatch.setattr(GRU, "_layer_step", lambda self, *a, **k: calls.append(1)
                        or original(self, *a, **k))
    cell = GRU(GRUConfig(input_size=4, hidden_size=5, reset="after"))
    losses, scalar = _probe_losses_and_scalar_losses(cell, name, np.random.default_rng(1),
                                                     before=calls.clear)
    assert len(calls) == step_calls
    assert_same_bits(losses, scalar, "losses")


@needs_kernels
@pytest.mark.parametrize("update", ["old", "new"])
@pytest.mark.parametrize("mask", ["none", "random", "lengths"])
def test_a_pass_loop_gives_loss_to_the_bit(update, mask):
    # the probes of W and b get x W alone from the projections, b added by the kernels
    cell = GRU(GRUConfig(input_size=4, hidden_size=6, reset="after", update=update, layers=2))
    rng = np.random.default_rng(4)
    for name in ("W0", "b0", "U0", "W1", "b1", "U1", "bn1"):
        losses, scalar = _probe_losses_and_scalar_losses(cell, name, rng, mask=mask)
        assert_same_bits(losses, scalar, f"losses moving {name}")


@needs_kernels
@pytest.mark.parametrize("name", ["W0", "b0", "U0"])
def test_a_pass_whose_arrays_the_kernels_refuse_steps_as_loss_does(name):
    # complex probes (the complex step): every step refused, taken by _layer_step, with
    # b added to x W first where the loop left it to the kernels
    cell = GRU(GRUConfig(input_size=4, hidden_size=6, reset="after"))
    losses, scalar = _probe_losses_and_scalar_losses(cell, name, np.random.default_rng(6),
                                                     imaginary=1e-20)
    assert np.iscomplexobj(losses) and np.abs(losses.imag).max() > 0
    assert_same_bits(losses.real, scalar.real, f"real parts moving {name}")
    assert_same_bits(losses.imag, scalar.imag, f"imaginary parts moving {name}")


@needs_kernels
def test_a_pass_keeps_a_cells_own_gates_and_step():
    # a gate function of the cell's own, or a subclass's own gates or step, is not the
    # kernels' sigmoid: the pass must compute what loss() does
    rng = np.random.default_rng(5)
    own_gate = GRU(GRUConfig(input_size=4, hidden_size=5, reset="after"))
    own_gate.gate = lambda a, out=None: np.tanh(a, out=out)

    class OwnGates(GRU):
        def _gate_values(self, kernels, a, xp, out, keep_a):
            a = a + xp
            return a, np.tanh(a)

    class OwnStep(GRU):
        def _layer_step(self, l, params, h, xp_t, m_t, out=None, blocks=None):
            state, cache = super()._layer_step(l, params, h, xp_t, m_t, out, blocks)
            return 0.5 * state, cache

    for cell in (own_gate, OwnGates(own_gate.config), OwnStep(own_gate.config)):
        right = GRU(own_gate.config)
        for name in ("W0", "U0"):
            losses, scalar = _probe_losses_and_scalar_losses(cell, name, rng)
            assert_same_bits(losses, scalar, f"{type(cell).__name__} moving {name}")
            reference, _ = _probe_losses_and_scalar_losses(right, name,
                                                           np.random.default_rng(0))
            assert not np.allclose(losses, reference)       # the cell's own function


# ---------------------------------------------------------------- the lm readout
def readout_both_ways(cell, params, top, batch):
    """``_readout``'s losses with the kernels and without."""
    with_kernels = cell._readout(params, top, batch)[0]
    with gate_kernels.disabled():
        without = cell._readout(params, top, batch)[0]
    return with_kernels, without


@needs_kernels
@settings(max_examples=80, deadline=None)
@given(classes=st.integers(2, 9), probes=st.integers(1, 6), steps=st.integers(1, 7),
       batch=st.integers(1, 300), hidden=st.integers(1, 9),
       probed=st.sampled_from(["top", "V", "c", "top and c"]), masked=st.booleans(),
       scale=st.sampled_from([0.1, 3.0, 300.0]), seed=st.integers(0, 2 ** 32 - 1))
def test_the_probes_readout_is_the_numpy_one_to_the_bit(classes, probes, steps, batch, hidden,
                                                        probed, masked, scale, seed):
    # batches of up to 300 sequences: rows past the kernel's blocks of 256; 9 classes:
    # past its 8 (refused, NumPy runs); logits of hundreds: the shift at work
    cell = GRU(GRUConfig(input_size=2, hidden_size=hidden, classes=classes))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    mask = make_mask("random" if masked else "none", rng, steps, batch)
    b = cell.sample_batch(rng, steps, batch, mask)
    P = probes
    stack = {"V": params["V"] * scale, "c": rng.normal(scale=scale, size=classes)}
    if probed == "V":
        stack["V"] = stack["V"] + rng.normal(scale=1e-3, size=(P,) + stack["V"].shape)
    if "c" in probed:
        stack["c"] = stack["c"] + rng.normal(scale=1e-3, size=(P, 1, classes))
    top = rng.normal(size=((P,) if "top" in probed else ()) + (steps, batch, hidden))
    got, want = readout_both_ways(cell, stack, top, b)
    assert np.shape(got) == (P,)
    assert_same_bits(got, want, "losses")


@needs_kernels
def test_the_probes_readout_hands_its_rows_to_the_kernel(monkeypatch):
    calls = []
    kernel = gate_kernels.KERNELS.lm_nll

    class Counted:
        def __getattr__(self, name):
            return getattr(kernel.__self__, name)

        def lm_nll(self, *args):
            calls.append(kernel(*args))
            return calls[-1]

    monkeypatch.setattr(gate_kernels, "KERNELS", Counted())
    cell = GRU(GRUConfig(input_size=3, hidden_size=4))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    top = rng.normal(size=(4, 5, 3, 4))
    cell._readout(params, top, batch)
    assert calls == [True]
    cell.loss(params, batch)                                # one loss: its cache, no kernel
    cell._readout(params, top + 0j, batch)                  # the complex step: NumPy
    assert calls == [True]
    with_kernels = cell._readout(params, top.astype(np.float32), batch)[0]
    assert calls == [True, True]                            # float64 logits all the same
    with gate_kernels.disabled():
        assert_same_bits(with_kernels, cell._readout(params, top.astype(np.float32), batch)[0],
                         "float32 states' losses")


@needs_kernels
@pytest.mark.parametrize("bad", ["9 classes", "class out of range", "negative class",
                                 "float32 logits", "strided logits", "int32 classes",
                                 "nll of another shape", "c of another length", "2-D logits"])
def test_the_readout_kernel_refuses_and_writes_nothing(bad):
    K = gate_kernels.KERNELS
    rng = np.random.default_rng(0)
    P, R, C = 3, 10, 2
    logits = rng.normal(size=(P, R, C))
    c = rng.normal(size=C)
    y = rng.integers(0, C, size=R)
    nll = np.zeros((P, R))
    if bad == "9 classes":
        logits, c = rng.normal(size=(P, R, 9)), rng.normal(size=9)
    elif bad == "class out of range":
        y[3] = C
    elif bad == "negative class":
        y[0] = -1
    elif bad == "float32 logits":
        logits = logits.astype(np.float32)
    elif bad == "strided logits":
        logits = rng.normal(size=(P, 2 * R, C))[:, ::2]
    elif bad == "int32 classes":
        y = y.astype(np.int32)
    elif bad == "nll of another shape":
        nll = np.zeros((P, R + 1))
    elif bad == "c of another length":
        c = rng.normal(size=C + 1)
    elif bad == "2-D logits":
        logits = logits[0]
    assert K.lm_nll(logits, c, y, nll) is False
    assert not nll.any()
    assert K.lm_nll(rng.normal(size=(P, R, C)), None, rng.integers(0, C, size=R),
                    np.zeros((P, R))) is True


@needs_kernels
def test_the_readout_kernel_keeps_nan_and_inf():
    # np.maximum's NaN (either side) and exp's overflow, as the NumPy readout has them
    cell = GRU(GRUConfig(input_size=2, hidden_size=3, classes=3))
    rng = np.random.default_rng(1)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 4, 2)
    top = rng.normal(size=(5, 4, 2, 3))
    top[0, 1, 0, 0] = np.nan
    top[1, 2, 1, :] = np.inf
    top[2, 0, 0, :] = 1e300
    with np.errstate(all="ignore"):
        got, want = readout_both_ways(cell, params, top, batch)
    assert np.isnan(want[0]) and np.isnan(got[0])
    assert_same_bits(got[1:], want[1:], "losses")
