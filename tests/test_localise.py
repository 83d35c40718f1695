"""Localisation: which gate block, which time step, where the recursion goes wrong."""

import numpy as np
import pytest

from cells.zoo.gru_bugs import BROKEN_GRUS
from cells.gru import GRU, GRUConfig
from cells.lstm import LSTM, LSTMConfig
from gradcheck import check_gradients
from gradcheck.localise import _numeric, _numeric_batched, format_steps, localise
from gradcheck.truncation import step_states
from gradcheck.tolerance import resolve_tolerance


def run(cls, seed=0, steps=6, mask=None, **fields):
    cell = cls(GRUConfig(**fields))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, steps, 3, mask)
    tols = {name: resolve_tolerance() for name in params}
    return localise(cell, params, batch, cell.param_specs(), tols, seed=seed)


@pytest.mark.parametrize("fields", [dict(), dict(layers=2, reset="after"),
                                    dict(embedding=True, readout="mean", gate="hard")], ids=str)
def test_correct_cell_is_green_everywhere(fields):
    loc = run(GRU, **fields)
    assert not loc.wrong_steps() and loc.entry() is None
    assert all(t is None for t in loc.first_divergence().values())
    assert loc.step_excess.max() < 1e-2 and loc.adjoint_excess.max() < 1e-2
    assert loc.sentence() == ("every per-step gate block agrees at every step; "
                              "dL/dh agrees at every step")
    # not vacuous: every entry judged its worst direction, whose two derivatives it keeps
    analytic, numeric = loc.step_values[..., 0], loc.step_values[..., 1]
    assert np.count_nonzero(loc.step_excess) > 0.9 * loc.step_excess.size
    assert np.count_nonzero(analytic) > 0.9 * analytic.size
    np.testing.assert_allclose(numeric, analytic, rtol=1e-4, atol=1e-9)
    # (a lower layer's state after the last step reaches nothing: its adjoint there is 0)
    assert np.count_nonzero(loc.adjoint_values[..., 0]) > 0.8 * loc.adjoint_values[..., 0].size


@pytest.mark.parametrize("cls", [GRU, BROKEN_GRUS["reset-gate-derivative"]])
def test_the_unperturbed_step_interface_loss_is_computed_once(monkeypatch, cls):
    # the step-interface check and the numeric derivatives share it (the batched
    # reference cell, and a zoo cell that takes the one-at-a-time path)
    import gradcheck.localise as localise_module
    calls = []
    original = localise_module._base_loss

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(localise_module, "_base_loss", counted)
    run(cls)
    assert len(calls) == 1


@pytest.mark.parametrize("layers", [1, 2])
def test_reset_gate_bug_enters_in_block_r_at_the_last_step(layers):
    loc = run(BROKEN_GRUS["reset-gate-derivative"], layers=layers)
    t, layer, rows = loc.entry()
    assert (t, layer) == (5, layers - 1)
    assert {block for _, block in rows} == {"r"}
    # h_{-1} = 0 hides the reset gate at step 0; every later step is wrong
    assert loc.wrong_steps()[(f"U{layers - 1}", "r")] == [1, 2, 3, 4, 5]
    # the adjoint first goes wrong one step back, where the reset gate's path joins
    assert loc.first_divergence()[layers - 1] == 4
    assert f"the error enters at t = 5 in layer {layers - 1}, block r" in loc.sentence()


def test_wrapped_index_is_localised_to_step_zero_with_a_clean_recursion():
    loc = run(BROKEN_GRUS["wrapped-time-index"], layers=2)
    assert loc.entry()[0] == 0
    assert all(steps == [0] for steps in loc.wrong_steps().values())
    assert all(t is None for t in loc.first_divergence().values())
    assert "dL/dh agrees at every step" in loc.sentence()


def test_elementwise_product_touches_only_U_and_not_the_recursion():
    loc = run(BROKEN_GRUS["elementwise-product"])
    assert {name for name, _ in loc.wrong_steps()} == {"U0"}
    assert all(t is None for t in loc.first_divergence().values())


def test_ignored_mask_enters_at_the_masked_step():
    mask = np.ones((6, 3))
    mask[2, 1] = 0
    loc = run(BROKEN_GRUS["mask-ignored-in-backward"], mask=mask)
    assert loc.entry()[0] == 2
    assert loc.first_divergence()[0] == 1


def test_check_result_carries_the_sentence():
    cell = BROKEN_GRUS["reset-gate-derivative"](GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    doc = result.as_dict()
    assert doc["localisation"]["sentence"].startswith("the error enters at t = 4 in layer 0, block r")
    assert {"parameter": "U0", "block": "r", "steps": [1, 2, 3, 4]} in doc["localisation"]["wrong_steps"]


def test_truncated_cells_are_not_localised_in_time():
    assert run(GRU, truncate=2, truncation="tail") is None


@pytest.mark.parametrize("steps, total, text", [
    ([0], 5, "step 0"), ([0, 1, 2, 4], 5, "steps 0-2, 4"), ([0, 1, 2], 3, "every step"),
    ([3, 5], 6, "steps 3, 5"),
])
def test_format_steps(steps, total, text):
    assert format_steps(steps, total) == text


class InPlaceStepGRU(GRU):
    """A correct GRU whose step interface writes the new state into the old one."""

    def step(self, params, state, x_t, m_t):
        new = super().step(params, state, x_t, m_t)
        for old, value in zip(state, new):
            old[...] = value
        return state


def test_a_step_that_updates_its_state_in_place_localises_as_the_reference():
    # each perturbed run starts from the unperturbed state at its step: a step that
    # overwrote that state would corrupt every later run
    mine, reference = run(InPlaceStepGRU, layers=2), run(GRU, layers=2)
    assert np.array_equal(mine.step_values, reference.step_values)
    assert np.array_equal(mine.adjoint_values, reference.adjoint_values)


class OneAtATimeGRU(GRU):
    """The reference GRU with its step interface overridden: localised one run at a time."""

    def step(self, params, state, x_t, m_t):
        return super().step(params, state, x_t, m_t)


def test_which_cells_run_their_probes_batched():
    assert GRU(GRUConfig()).steps_take_probes
    assert LSTM(LSTMConfig()).steps_take_probes
    assert BROKEN_GRUS["reset-gate-derivative"](GRUConfig()).steps_take_probes
    assert not OneAtATimeGRU(GRUConfig()).steps_take_probes
    assert not InPlaceStepGRU(GRUConfig()).steps_take_probes


LOCALISED = [
    (GRU, GRUConfig, dict()),
    (GRU, GRUConfig, dict(layers=2, reset="after", update="new")),
    (GRU, GRUConfig, dict(embedding=True, readout="mean", gate="hard")),
    (BROKEN_GRUS["reset-gate-derivative"], GRUConfig, dict(layers=2)),
    (BROKEN_GRUS["mask-ignored-in-backward"], GRUConfig, dict()),
    (LSTM, LSTMConfig, dict(layers=2)),
    (LSTM, LSTMConfig, dict(embedding=True, readout="mean")),
]


@pytest.mark.parametrize("cls, config_class, fields", LOCALISED,
                         ids=[f"{c.__name__}-{f}" for c, _, f in LOCALISED])
def test_batched_probes_give_the_one_at_a_time_derivatives(cls, config_class, fields):
    # the probes of a step as one batch: the same directional derivatives, to rounding
    cell = cls(config_class(**fields))
    rng = np.random.default_rng(3)
    params = cell.init_params(rng)
    mask = np.ones((5, 3))
    mask[3:, 1] = 0
    mask[1, 2] = 0
    batch = cell.sample_batch(rng, 5, 3, mask)
    x = cell.embed(params, batch)
    base = (x,) + step_states(cell, params, x, batch.mask)
    rows = [(s.name, b, idx, 0) for s in cell.param_specs() if s.name not in ("V", "c")
            for b, idx in (s.block_slices() or {None: (slice(None),) * len(s.shape)}).items()]
    step_dirs = []
    for name, _, idx, _ in rows:
        step_dirs.append([])
        for _ in range(5):
            step_dirs[-1].append([])
            for _ in range(2):
                v = np.zeros_like(params[name])
                v[idx] = rng.choice([-1.0, 1.0], size=v[idx].shape)
                step_dirs[-1][-1].append(v)
    adj_dirs = [[[rng.choice([-1.0, 1.0], size=s.shape) for _ in range(2)] for _ in range(5)]
                for s in base[1][0]]
    one = _numeric(cell, params, batch, base, rows, step_dirs, adj_dirs)
    batched = _numeric_batched(cell, params, batch, base, rows, step_dirs, adj_dirs)
    for a, b in zip(one, batched):
        assert a.shape == b.shape and np.abs(a).max() > 1e-3
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8)


def test_batched_probes_move_one_step_only():
    # not vacuous: perturbing every step instead of step t alone changes the derivatives
    cell = GRU(GRUConfig())
    rng = np.random.default_rng(3)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 4, 3)
    x = cell.embed(params, batch)
    base = (x,) + step_states(cell, params, x, batch.mask)
    rows = [("U0", "r", (slice(None), slice(0, 5)), 0)]
    v = np.zeros_like(params["U0"])
    v[:, :5] = 1.0
    step_dirs = [[[v] for _ in range(4)]]
    got = _numeric_batched(cell, params, batch, base, rows, step_dirs, [])[0][0, :, 0]
    details = cell.gradient_details(params, batch)["step_contributions"]["U0"]
    want = np.array([np.sum(details[t] * v) for t in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    whole = (cell.loss({**params, "U0": params["U0"] + 1e-6 * v}, batch)
             - cell.loss({**params, "U0": params["U0"] - 1e-6 * v}, batch)) / 2e-6
    assert not np.allclose(got, whole, rtol=1e-3)
    assert np.isclose(got.sum(), whole, rtol=1e-6)


def test_batched_probes_of_float32_parameters_move_in_float64():
    # theta + e v of a float32 parameter is a float64 sum, as one run at a time makes it
    cell = GRU(GRUConfig(embedding=True))
    rng = np.random.default_rng(3)
    params = {k: v.astype(np.float32) for k, v in cell.init_params(rng).items()}
    batch = cell.sample_batch(rng, 4, 3)
    x = cell.embed(params, batch)
    base = (x,) + step_states(cell, params, x, batch.mask)
    rows = [("U0", "r", (slice(None), slice(0, 5)), 0)]
    v = np.zeros(params["U0"].shape)
    v[:, :5] = 1.0
    step_dirs = [[[v] for _ in range(4)]]
    adj_dirs = [[[rng.choice([-1.0, 1.0], size=base[1][0][0].shape)] for _ in range(4)]]
    one = _numeric(cell, params, batch, base, rows, step_dirs, adj_dirs)
    batched = _numeric_batched(cell, params, batch, base, rows, step_dirs, adj_dirs)
    for a, b in zip(one, batched):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8)


def test_batched_probes_in_small_chunks_give_the_same_derivatives(monkeypatch):
    # a large parameter's probes run in several batches (finite_differences.STACK_BYTES)
    import gradcheck.finite_differences as fd
    cell = GRU(GRUConfig(layers=2))
    rng = np.random.default_rng(5)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 4, 3)
    calls = []
    original = GRU.step
    monkeypatch.setattr(GRU, "step", lambda self, *a: calls.append(1) or original(self, *a))
    loc = localise(cell, params, batch, cell.param_specs(),
                   {n: resolve_tolerance() for n in params}, seed=5)
    whole, calls[:] = len(calls), []
    monkeypatch.setattr(fd, "STACK_BYTES", 1)                # one direction (two probes) a batch
    small = localise(cell, params, batch, cell.param_specs(),
                     {n: resolve_tolerance() for n in params}, seed=5)
    assert len(calls) > whole                                 # more, smaller batches ran
    np.testing.assert_allclose(small.step_values, loc.step_values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(small.adjoint_values, loc.adjoint_values, rtol=1e-9, atol=1e-12)


def _embedding_word_case(seed=1):
    """The blog's embedding bug, its wrong rows rarely among a few sampled elements."""
    cell = BROKEN_GRUS["blog-embedding-word"](GRUConfig(embedding=True, vocab=2000))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, 5, 3)


def test_a_localised_error_fails_a_check_that_sampled_the_elements_it_is_in():
    cell, params, batch = _embedding_word_case()
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", max_elements=2,
                             seed=1)
    # the two sampled elements of each parameter agree; localisation sees E wrong
    assert all(c.passed for c in result.comparisons)
    assert not result.passed and result.verdict == "fail"
    assert result.summary().startswith("fail: localisation finds an error that the 12 of 8168 "
                                       "elements compared one by one with the analytic gradient")
    assert "the error enters at t = 3 in the embedding, E" in result.summary()


def test_sampled_and_fast_passes_say_what_they_compared():
    cell = GRU(GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    sampled = check_gradients(cell, params, batch, oracles="analytic,numeric", max_elements=1)
    assert sampled.summary().startswith(
        "pass: the oracle pair (analytic, numeric) agrees on 5 parameters (5 of 168 elements); "
        "numeric oracle sampled: at most 1 elements per parameter (seeded), the rest not compared")
    fast = check_gradients(cell, params, batch, oracles="analytic,numeric", mode="fast")
    assert fast.summary().startswith("pass: no parameter needed an element-by-element comparison; "
                                     "the numeric oracle's 2 gaussian directions")


def test_localisation_does_not_judge_a_move_across_a_hard_sigmoid_kink():
    # a correct hard-gate GRU whose localisation move at step 1 crosses a kink of W0's
    # block r: judged, it failed fast mode (nothing else compared one by one)
    from gradcheck.runner import check_builtin
    result = check_builtin("gru", steps=8, batch=6, seed=6, input_size=32, hidden_size=32,
                           gate="hard", mode="fast", oracles="analytic,numeric")
    assert result.passed, result.summary()
    assert result.localisation.entry() is None


def test_kink_flags_allow_for_the_rounding_of_a_large_loss():
    from gradcheck.finite_differences import central_differences

    # a smooth loss summed to ~1e5 with small slopes: its one-sided differences differ
    # by rounding, ~eps L / h = 4e-6, far above 1e-3 of the slopes (~5e-5)
    w = np.linspace(-1.0, 1.0, 40)
    flags = central_differences(
        lambda p: float(1e5 + 1e-4 * np.sum(np.log1p(np.exp(p["w"])))), {"w": w})["w"].kinks
    assert not flags.any()
    # a real kink still shows at that size
    kinked = central_differences(lambda p: float(1e5 + np.sum(np.abs(p["w"]))),
                                 {"w": np.array([0.0, 0.5])})["w"].kinks
    assert kinked.tolist() == [True, False]


def test_details_that_disagree_with_a_sampled_gradient_fail_the_check():
    # gradient() zeroes a column that the sampled elements miss; the inherited
    # gradient_details() still holds it: with every element compared this is caught
    # by the comparison, sampled it is caught by the disagreement
    class ZeroedColumn(GRU):
        def gradient(self, params, batch):
            g = super().gradient(params, batch)
            g["U0"][:, 4] = 0.0
            return g

    cell = ZeroedColumn(GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    full = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert not full.passed and "not localised by time step" in full.summary()
    sampled = check_gradients(cell, params, batch, oracles="analytic,numeric", max_elements=1)
    assert not sampled.passed
    assert "gradient_details()'s per-step contributions to U0" in sampled.defects[0]


class _Decayed(GRU):
    """Weight decay on W0 added to the loss and to the gradient, right; gradient_details()
    inherited, so it misses the decay."""

    def loss(self, params, batch):
        return super().loss(params, batch) + 0.05 * float(np.sum(params["W0"] ** 2))

    def loss_and_gradient(self, params, batch):
        loss, grads = super().loss_and_gradient(params, batch)
        grads["W0"] = grads["W0"] + 0.1 * params["W0"]
        return loss + 0.05 * float(np.sum(params["W0"] ** 2)), grads


@pytest.mark.parametrize("how", [dict(mode="fast"), dict(max_elements=1)])
def test_details_that_miss_a_right_term_leave_a_sampled_check_passing(how):
    # the numeric oracle, asked where the gradient and the details differ, sides with
    # the gradient; a note, not a failure
    cell = _Decayed(GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", **how)
    assert result.passed, result.summary()
    assert any(n.startswith("not localised by time step: gradient_details()'s per-step "
                            "contributions to W0") for n in result.notes)


def test_a_right_term_in_one_parameter_does_not_hide_a_wrong_one_in_another():
    # W0 has a right decay term the inherited details miss; U0 a zeroed column: the
    # numeric oracle must be asked about both parameters where the details differ
    class DecayedAndWrongU(_Decayed):
        def loss_and_gradient(self, params, batch):
            loss, grads = super().loss_and_gradient(params, batch)
            grads["U0"][:, 0] = 0.0
            return loss, grads

    cell = DecayedAndWrongU(GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    for how in (dict(max_elements=1), dict(max_elements=1, mode="fast")):
        result = check_gradients(cell, params, batch, oracles="analytic,numeric", **how)
        assert not result.passed, how
        assert "there the numeric oracle sides with gradient_details(): U0[" in result.summary()


class PenaltyOutsideTheStepsGRU(GRU):
    """BROKEN: the loss adds 0.1 |U0|^2, the gradient leaves the penalty out."""

    def loss(self, params, batch):
        return super().loss(params, batch) + 0.1 * float((params["U0"] ** 2).sum())


def test_a_failing_check_that_localisation_finds_nothing_in_says_where_not_to_look():
    # every per-step contribution and dL/dh agree (the penalty is on the tied U0, not in a
    # step): the sentence used to read as a clean bill, "every per-step gate block agrees"
    cell = PenaltyOutsideTheStepsGRU(GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    result = check_gradients(cell, params, cell.sample_batch(rng, 5, 3),
                             oracles="analytic,numeric", seed=0)
    assert not result.passed and result.localisation.entry() is None
    assert result.localisation.sentence().endswith(
        "dL/dh agrees at every step: the mismatch is not in the steps' backward pass (look at "
        "the readout, a loss term outside the steps, or the forward pass)")
    assert "not in the steps' backward pass" in result.as_dict()["localisation"]["sentence"]
    right = check_gradients(GRU(GRUConfig()), params, cell.sample_batch(rng, 5, 3), seed=0)
    assert right.passed and "not in the steps'" not in right.localisation.sentence()


class DriftedStepGRU(GRU):
    """loss() and gradient() are the reference's; the step interface scales its inputs."""

    def step(self, params, state, x_t, m_t):
        return super().step(params, state, 1.01 * x_t, m_t)


@pytest.mark.parametrize("options", [{}, {"mode": "fast"}, {"max_elements": 5}])
def test_a_step_interface_that_drifts_from_loss_is_not_used_to_localise(options):
    # localisation moves parameters and states through step(): where that computes another
    # loss than loss(), it would judge another function (a right gradient failed fast and
    # sampled checks, "the error enters at t = 4 ... blocks r, z, h")
    cell = DriftedStepGRU(GRUConfig())
    rng = np.random.default_rng(0)
    params, batch = cell.init_params(rng), cell.sample_batch(rng, 5, 3)
    result = check_gradients(cell, params, batch, seed=0, **options)
    assert result.passed and result.localisation is None
    assert any(n.startswith("not localised by time step: the step interface and loss() "
                            "compute different losses") for n in result.notes)



def test_localisation_on_worker_processes_gives_the_same_numbers(monkeypatch):
    from gradcheck import probe_pool
    if not probe_pool.can_fork():
        pytest.skip("forked workers need Linux and one thread")
    cell = BROKEN_GRUS["reset-gate-derivative"](GRUConfig(layers=2))
    rng = np.random.default_rng(7)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 6, 3)
    tolerances = {n: resolve_tolerance() for n in params}
    monkeypatch.setattr(type(cell), "probes_fork_safe", False)      # one process
    alone = localise(cell, params, batch, cell.param_specs(), tolerances, seed=7)
    monkeypatch.undo()
    forks = []
    original = probe_pool._fork_child
    monkeypatch.setattr(probe_pool, "_fork_child", lambda *a: forks.append(1) or original(*a))
    monkeypatch.setattr(probe_pool, "FORK_WORTH_SECONDS", 0.0)      # fork for these few ms
    monkeypatch.setattr(probe_pool, "_ticket_queue", lambda count, first: None)   # shares
    shared = localise(cell, params, batch, cell.param_specs(), tolerances, seed=7)
    assert forks                                                     # a child ran steps
    assert np.array_equal(shared.step_values, alone.step_values, equal_nan=True)
    assert np.array_equal(shared.adjoint_values, alone.adjoint_values, equal_nan=True)
    assert shared.sentence() == alone.sentence()
    assert "the error enters at t = 5 in layer 1, block r of W1, U1, b1" in alone.sentence()
