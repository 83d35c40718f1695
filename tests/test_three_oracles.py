"""End to end: all three oracles agree on the reference GRU in every variant."""

import pytest

from gradcheck import check_builtin


def test_all_pairs_agree_in_every_variant(config):
    fields = config.as_dict()
    result = check_builtin("gru", steps=4, batch=2, seed=5, **fields)
    assert result.oracles == ("analytic", "numeric", "autodiff")
    assert result.forward_ok
    assert result.passed, result.summary()
    pairs = {c.oracles for c in result.comparisons}
    assert pairs == {("analytic", "numeric"), ("analytic", "autodiff"), ("numeric", "autodiff")}
    # analytic and autodiff are both exact: they agree to rounding
    exact = [c for c in result.comparisons if c.oracles == ("analytic", "autodiff")]
    assert max(c.max_abs_error for c in exact) < 1e-12


@pytest.mark.parametrize("bug", ["reset-gate-derivative", "wrapped-time-index",
                                 "elementwise-product"])
def test_broken_analytic_is_named_the_odd_one_out(bug):
    import numpy as np

    from cells.zoo.gru_bugs import BROKEN_GRUS
    from cells.gru import GRUConfig
    from cells.gru_symbolic import SymbolicGRU
    from gradcheck import check_gradients

    config = GRUConfig(layers=2)
    cell = BROKEN_GRUS[bug](config)
    rng = np.random.default_rng(2)
    params = cell.init_params(rng)
    data = cell.sample_batch(rng, 5, 3)
    result = check_gradients(cell, params, data, symbolic=SymbolicGRU(config), seed=2)
    assert result.verdict == "fail"
    assert result.odd_one_out() == "analytic"
    assert result.summary().startswith("fail: analytic is the odd one out")
    # numeric and autodiff agree everywhere: the bug is the hand BPTT's alone
    assert all(c.passed for c in result.comparisons if c.oracles == ("numeric", "autodiff"))


@pytest.mark.parametrize("reset", ["before", "after"])
def test_update_new_convention_three_oracles(reset):
    result = check_builtin("gru", steps=4, batch=2, seed=3, update="new", reset=reset, layers=2,
                           mask="random")
    assert result.passed, result.summary()
    assert result.cell["update"] == "new"
