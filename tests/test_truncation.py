"""Truncated BPTT: both semantics checked exactly against their surrogates."""

import numpy as np
import pytest

from cells.zoo.gru_bugs import OffByOneWindowGRU
from cells.gru import GRU, GRUConfig
from cells.lstm import LSTM, LSTMConfig
from gradcheck import check_gradients
from gradcheck.finite_differences import central_differences, numeric_gradient
from gradcheck.masks import make_mask
from gradcheck.tolerance import resolve_tolerance
from gradcheck.truncation import FULL, Truncation, parse_truncation, surrogate_loss

STEPS = 7


def case(seed=0, mask_kind="random", **fields):
    cell = GRU(GRUConfig(**fields))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, STEPS, 3, make_mask(mask_kind, rng, STEPS, 3))


@pytest.mark.parametrize("kind", ["window", "tail"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("fields", [dict(), dict(layers=2, readout="mean"),
                                    dict(embedding=True, reset="after", gate="hard"),
                                    dict(layers=2, embedding=True, readout="mean")], ids=str)
def test_truncated_gradient_matches_its_surrogate_and_differs_from_full(kind, k, fields):
    cell, params, batch = case(truncate=k, truncation=kind, **fields)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert result.passed, result.summary()
    assert max(c.max_abs_error for c in result.comparisons) < 1e-8
    full = GRU(GRUConfig(**fields)).gradient(params, batch)
    got = cell.gradient(params, batch)
    assert max(np.abs(full[n] - got[n]).max() for n in ("U0", "W0")) > 1e-3
    # the readout's own parameters never see truncation
    np.testing.assert_allclose(got["V"], full["V"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind, k", [("window", STEPS - 1), ("window", 50), ("tail", STEPS),
                                     ("tail", 50)])
def test_long_enough_truncation_is_full_bptt(kind, k):
    cell, params, batch = case(truncate=k, truncation=kind, layers=2)
    full = GRU(GRUConfig(layers=2)).gradient(params, batch)
    got = cell.gradient(params, batch)
    for n in full:
        np.testing.assert_allclose(got[n], full[n], rtol=1e-12, atol=1e-15, err_msg=n)


def test_window_one_short_differs_from_full():
    cell, params, batch = case(truncate=STEPS - 2, truncation="window", mask_kind="none")
    full = GRU(GRUConfig()).gradient(params, batch)
    # U0's step-0 term is zero anyway (h_{-1} = 0); W0's is not
    assert np.abs(cell.gradient(params, batch)["W0"] - full["W0"]).max() > 1e-8


def test_surrogate_value_is_the_true_loss_at_the_point():
    # freezing changes the gradient, not the value: every surrogate equals L at params0
    cell, params, batch = case(layers=2)
    for tr in (FULL, Truncation("window", 2), Truncation("tail", 2)):
        assert surrogate_loss(cell, params, batch, tr)(params) == pytest.approx(
            cell.loss(params, batch), rel=1e-13)


def test_window_semantics_by_hand():
    # T = 3, window k = 1, written out: the readout uses h_0, h_1 and h_2, where
    #   h_0 = step(x_0, 0),  h_1 = step(x_1, step(x_0, 0))          (windows reach step 0)
    #   h_2 = step(x_2, step(x_1, frozen h_0))                       (window 1..2)
    cell = GRU(GRUConfig(truncate=1, truncation="window", layers=2))
    rng = np.random.default_rng(3)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 3, 2)
    x = batch.x
    frozen_h0 = cell.step(params, cell.initial_state(2), x[0], batch.mask[0])

    def by_hand(p):
        run = lambda state, t: cell.step(p, state, x[t], batch.mask[t])
        h0 = run(cell.initial_state(2), 0)
        h1 = run(h0, 1)
        h2 = run(run(frozen_h0, 1), 2)
        return cell.readout_loss(p, np.stack([cell.output(h) for h in (h0, h1, h2)]), batch)

    numeric = central_differences(by_hand, params)
    analytic = cell.gradient(params, batch)
    for name in params:
        np.testing.assert_allclose(analytic[name], numeric[name].value, rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    assert [cell.truncation.window_start(t, 3) for t in range(3)] == [0, 0, 1]
    assert [Truncation("tail", 2).window_start(t, 3) for t in range(3)] == [1, 1, 1]


def test_off_by_one_window_fails_and_says_so():
    cell = OffByOneWindowGRU(GRUConfig(truncate=3, truncation="window", layers=2))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 9, 3)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert not result.passed
    assert "matches window k=2 instead of window k=3" in result.summary()


def test_the_truncation_diagnosis_runs_its_differences_vectorised(monkeypatch):
    # each candidate truncation's surrogate is differentiated through its own losses,
    # the numbers of one element at a time (13 s -> 1.7 s at (20, 8, 16, 32), window 5)
    import gradcheck.check as check_module
    cell = OffByOneWindowGRU(GRUConfig(truncate=3, truncation="window"))
    rng = np.random.default_rng(4)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 7, 3)
    analytic = cell.gradient(params, batch)
    tolerances = {name: resolve_tolerance(np.float64) for name in params}
    one_by_one = []
    original = check_module.batched_central_differences

    def spy(cell, params, batch, **kwargs):
        assert kwargs["losses"] is kwargs["loss"].losses          # the surrogate's own
        found = original(cell, params, batch, workers=1, **kwargs)
        want = central_differences(kwargs["loss"], params)
        one_by_one.append(all(np.array_equal(found[k].value, want[k].value) for k in want))
        return found

    monkeypatch.setattr(check_module, "batched_central_differences", spy)
    note = check_module.diagnose_truncation(cell, params, batch, cell.truncation, analytic,
                                            tolerances)
    assert note.startswith("the analytic gradient matches window k=2 instead of window k=3")
    assert one_by_one == [True]                 # k - 1 matched first, to the bit


def test_tail_is_not_window():
    # the two semantics give different gradients for the same k
    w, params, batch = case(truncate=2, truncation="window")
    t = GRU(GRUConfig(truncate=2, truncation="tail"))
    assert np.abs(w.gradient(params, batch)["U0"] - t.gradient(params, batch)["U0"]).max() > 1e-3


@pytest.mark.parametrize("truncate, kind, message", [
    (0, "window", "truncate=0 must be -1"),
    (-2, "window", "truncate=-2"),
    (2, "middle", "truncation='middle' is not one of window, tail"),
    (1.5, "window", "must be an integer"),
    (True, "window", "must be an integer"),
])
def test_bad_truncation_is_refused(truncate, kind, message):
    with pytest.raises(ValueError, match=message):
        parse_truncation(truncate, kind)
    with pytest.raises(ValueError, match=message):
        GRUConfig(truncate=truncate, truncation=kind)


def test_parse_truncation():
    assert parse_truncation(-1, "tail") == FULL
    assert parse_truncation(4, "tail") == Truncation("tail", 4)


class OneAtATimeGRU(GRU):
    """The reference GRU with its step interface overridden: no vectorised surrogate."""

    def step(self, params, state, x_t, m_t):
        return super().step(params, state, x_t, m_t)


@pytest.mark.parametrize("cls, config_class, fields", [
    (GRU, GRUConfig, dict(truncate=2, truncation="window")),
    (GRU, GRUConfig, dict(truncate=3, truncation="tail", layers=2, readout="mean")),
    (GRU, GRUConfig, dict(truncate=1, truncation="window", embedding=True, reset="after",
                          gate="hard")),
    (LSTM, LSTMConfig, dict(truncate=2, truncation="window", layers=2)),
    (LSTM, LSTMConfig, dict(truncate=2, truncation="tail", embedding=True)),
], ids=lambda v: str(v) if isinstance(v, dict) else getattr(v, "__name__", None))
def test_vectorised_surrogate_gives_the_one_at_a_time_numbers(cls, config_class, fields):
    # the surrogate's probes in one pass: every element's difference to the bit
    cell = cls(config_class(**fields))
    rng = np.random.default_rng(4)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, STEPS, 3, make_mask("random", rng, STEPS, 3))
    loss = surrogate_loss(cell, params, batch, cell.truncation)
    assert hasattr(loss, "losses")
    one = numeric_gradient(cell, params, batch, method="central", loss=loss)
    calls = []
    counted = lambda stack: calls.append(1) or loss.losses(stack)   # noqa: E731
    counted_loss = lambda p: loss(p)                                 # noqa: E731
    counted_loss.losses = counted
    batched = numeric_gradient(cell, params, batch, method="batched", loss=counted_loss)
    assert len(calls) > 1                                     # the vectorised path ran
    for name in params:
        assert np.array_equal(batched[name].value, one[name].value), name
        assert np.array_equal(batched[name].kinks, one[name].kinks), name


def test_surrogate_is_vectorised_only_for_steps_that_take_probes():
    cell, params, batch = case(truncate=2, truncation="window")
    assert hasattr(surrogate_loss(cell, params, batch, cell.truncation), "losses")
    other = OneAtATimeGRU(cell.config)
    assert not hasattr(surrogate_loss(other, params, batch, other.truncation), "losses")
    # and the check still runs (one element at a time) and passes
    assert check_gradients(other, params, batch, oracles="analytic,numeric").passed


def test_vectorised_surrogate_still_catches_the_off_by_one_window():
    cell, params, batch = case(truncate=2, truncation="window")
    broken = OffByOneWindowGRU(cell.config)
    loss = surrogate_loss(broken, params, batch, broken.truncation)
    assert hasattr(loss, "losses")
    result = check_gradients(broken, params, batch, oracles="analytic,numeric")
    assert not result.passed


def test_a_step_interface_that_drifts_from_loss_fails_a_truncated_check():
    # a subclass adds weight decay to loss() alone: truncated, the numeric oracle
    # differentiates the step interface's surrogate, which never sees the decay, and
    # agrees with the (undecayed) backward pass; the check must say the two differ
    class DecayGRU(GRU):
        def loss(self, params, batch):
            return super().loss(params, batch) + 1e-2 * float(np.sum(params["U0"] ** 2))

    cell = DecayGRU(GRUConfig(truncate=2, truncation="window"))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 6, 3)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert not result.passed
    assert result.defects[0].startswith("the step interface and loss() compute different losses")
    # the reference cell's surrogate is its loss at the point: no such defect
    plain = GRU(GRUConfig(truncate=2, truncation="window"))
    assert check_gradients(plain, params, batch, oracles="analytic,numeric").passed
