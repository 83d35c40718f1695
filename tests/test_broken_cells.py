"""The harness must fail on wrong gradients: three kinds of real derivation bugs."""

import pytest

from cells.zoo.gru_bugs import (ElementwiseProductGRU, ResetGateMissingDerivativeGRU,
                          WrappedTimeIndexGRU)
from cells.gru import GRUConfig
from conftest import make_case
from gradcheck import check_gradients

CASES = [
    # broken cell, a parameter it must flag, a block that parameter must fail in
    (ResetGateMissingDerivativeGRU, "U0", "r"),
    (WrappedTimeIndexGRU, "U0", "z"),
    (ElementwiseProductGRU, "U0", "h"),
]


@pytest.mark.parametrize("cls, param, block", CASES, ids=lambda c: getattr(c, "__name__", c))
@pytest.mark.parametrize("layers", [1, 2])
def test_broken_cell_fails_against_numeric(cls, param, block, layers):
    cell = cls(GRUConfig(layers=layers))
    params, data = make_case(cell, seed=3)
    result = check_gradients(cell, params, data, oracles="analytic,numeric", seed=3)
    assert result.verdict == "fail"
    failing = {c.parameter: c for c in result.comparisons if not c.passed}
    assert param in failing
    assert failing[param].blocks_failed[block] > 0
    # the output layer's gradient does not pass through the bug
    assert "V" not in failing and "c" not in failing
    # the summary names the worst element and both values
    worst = result.worst_failure()
    assert worst.describe_worst() in result.summary()
    assert "analytic = " in result.summary() and "numeric = " in result.summary()


def test_reset_gate_bug_is_worst_in_block_r():
    cell = ResetGateMissingDerivativeGRU(GRUConfig())
    params, data = make_case(cell, seed=0)
    result = check_gradients(cell, params, data, oracles="analytic,numeric")
    assert result.worst_failure().worst_block == "r"


def test_wrapped_index_shows_even_with_one_step():
    # with T = 1 the wrapped state h_{T-1} is h_0 itself, not the zero initial
    # state, so even a one-step sequence exposes the bug
    cell = WrappedTimeIndexGRU(GRUConfig())
    params, data = make_case(cell, steps=1)
    assert not check_gradients(cell, params, data, oracles="analytic,numeric").passed
