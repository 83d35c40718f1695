"""Property tests over random configurations, masks and truncations."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cells import backend
from cells.zoo.gru_bugs import BROKEN_GRUS
from cells.zoo.lstm_bugs import BROKEN_LSTMS
from cells.gru import GRU
from gradcheck import check_gradients, resolve_tolerance
from gradcheck import strategies as gst
from gradcheck.tolerance import agree
from gradcheck.truncation import FULL
from conftest import count_broken, count_correct

backend.load("pytensor")   # PyTensor raises the recursion limit on import: before hypothesis runs


@st.composite
def cases(draw, *, truncation=FULL, max_steps=6, min_kept=1):
    """(cell, params, batch, seed) for a random GRU, mask and seed."""
    steps = draw(st.integers(1, max_steps))
    batch = draw(st.integers(1, 3))
    if truncation == "draw":
        truncation = draw(gst.truncations(steps=steps))
    config = draw(gst.gru_configs(truncation=truncation))
    # a fully masked batch has no gradient at all: check_gradients refuses it
    mask = draw(gst.masks(steps=steps, batch=batch, min_kept=min_kept))
    seed = draw(gst.seeds())
    cell = GRU(config)
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, steps, batch, mask), seed


@settings(max_examples=120)
@given(cases())
def test_three_oracles_agree_on_random_configs(case):
    from cells.gru_symbolic import SymbolicGRU
    cell, params, batch, seed = case
    result = check_gradients(cell, params, batch, symbolic=SymbolicGRU(cell.config), seed=seed)
    assert count_correct(result), result.summary()


@settings(max_examples=120)
@given(cases(truncation="draw", max_steps=7))
def test_truncated_analytic_matches_its_surrogate(case):
    cell, params, batch, seed = case
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=seed)
    assert count_correct(result), result.summary()


@settings(max_examples=120)
@given(cases(truncation="draw"), st.data())
def test_masked_steps_contribute_exactly_zero(case, data):
    cell, params, batch, seed = case
    hidden = batch.mask == 0
    assume(hidden.any())
    other = batch.copy()
    rng = np.random.default_rng(data.draw(gst.seeds()))
    if cell.config.embedding:
        other.x[hidden] = rng.integers(0, cell.config.vocab, size=hidden.sum())
    else:
        other.x[hidden] = rng.normal(size=(hidden.sum(), cell.config.input_size))
    if cell.config.readout == "lm":
        other.y[hidden] = rng.integers(0, cell.config.classes, size=hidden.sum())
    a, b = cell.gradient(params, batch), cell.gradient(params, other)
    for name in params:
        assert np.array_equal(a[name], b[name]), name


@settings(max_examples=150)
@given(cases(truncation="draw"), st.sampled_from(sorted(BROKEN_GRUS)))
def test_a_broken_cell_never_passes(case, bug):
    result = check_broken(BROKEN_GRUS[bug], *case)
    assert count_broken(result), f"{bug} passed: {result.summary()}"


def check_broken(broken_class, cell, params, batch, seed, **options):
    """The analytic-against-numeric check of ``broken_class`` on the case, where its bug
    changes the gradient: elsewhere no check can (or should) see it (hypothesis ``assume``;
    off-by-one-window without truncation, a one-step sequence, ...)."""
    broken = broken_class(cell.config)
    wrong, true = broken.gradient(params, batch), cell.gradient(params, batch)
    tol = resolve_tolerance(np.float64)
    assume(any(not agree(wrong[n], true[n], tol).all() for n in params))
    return check_gradients(broken, params, batch, oracles="analytic,numeric", seed=seed,
                           **options)


@settings(max_examples=150)
@given(cases(truncation="draw", min_kept=0), st.sampled_from(sorted(BROKEN_GRUS)))
def test_a_bug_said_to_be_dormant_leaves_the_gradient_as_it_is(case, bug):
    # check_builtin refuses to check a bug whose ``dormant`` gives a reason: the
    # reason must be true, the broken gradient then the reference's
    cell, params, batch, seed = case
    broken = BROKEN_GRUS[bug](cell.config)
    assume(getattr(broken, "dormant", lambda b: None)(batch))
    wrong, true = broken.gradient(params, batch), cell.gradient(params, batch)
    for name in params:
        assert np.array_equal(wrong[name], true[name]), (bug, name)


@st.composite
def lstm_cases(draw, *, max_steps=5):
    from cells.lstm import LSTM, LSTMConfig
    steps = draw(st.integers(1, max_steps))
    batch = draw(st.integers(1, 3))
    size = st.integers(1, 4)
    config = LSTMConfig(input_size=draw(size), hidden_size=draw(size),
                        layers=draw(st.integers(1, 2)), classes=draw(st.integers(2, 4)),
                        vocab=draw(size), gate=draw(st.sampled_from(["sigmoid", "hard"])),
                        readout=draw(st.sampled_from(["lm", "mean"])),
                        embedding=draw(st.booleans()))
    mask = draw(gst.masks(steps=steps, batch=batch, min_kept=1))
    seed = draw(gst.seeds())
    cell = LSTM(config)
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, steps, batch, mask), seed


@settings(max_examples=60)
@given(lstm_cases())
def test_lstm_three_oracles_agree_on_random_configs(case):
    from cells.lstm_symbolic import SymbolicLSTM
    cell, params, batch, seed = case
    result = check_gradients(cell, params, batch, symbolic=SymbolicLSTM(cell.config), seed=seed)
    assert count_correct(result), result.summary()


@settings(max_examples=60)
@given(lstm_cases(), st.sampled_from(sorted(BROKEN_LSTMS)))
def test_a_broken_lstm_never_passes(case, bug):
    result = check_broken(BROKEN_LSTMS[bug], *case)
    assert count_broken(result), f"{bug} passed: {result.summary()}"


@settings(max_examples=100)
@given(cases(truncation="draw"), st.sampled_from(sorted(BROKEN_GRUS)))
def test_a_broken_cell_never_passes_fast_mode(case, bug):
    result = check_broken(BROKEN_GRUS[bug], *case, mode="fast", localise=False)
    assert count_broken(result), f"{bug} passed fast mode: {result.summary()}"


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_classes=1), "min_classes=1 must be"),
    (dict(min_layers=3, max_layers=2), "min_layers=3 is larger than max_layers=2"),
    (dict(min_size=0), "min_size=0 must be"),
])
def test_strategy_arguments_are_validated_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gst.gru_configs(**kwargs)


@settings(max_examples=30)
@given(gst.gru_configs(max_size=1))
def test_configs_with_the_smallest_sizes_still_have_two_classes(config):
    assert config.classes == 2 and config.hidden_size == 1
