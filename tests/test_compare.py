import numpy as np
import pytest

from gradcheck.check import odd_one_out, parse_oracles
from gradcheck.compare import compare_gradients
from gradcheck.params import ParamSpec
from gradcheck.tolerance import Tolerance

TOL = Tolerance(1e-6, 1e-5)
SPEC = ParamSpec("U0", (2, 6), ("r", "z", "h"), 1)


def test_worst_element_named_with_block_and_values():
    a = np.zeros((2, 6))
    b = a.copy()
    b[1, 3] = 0.5          # column 3 lies in block z (columns 2..3)
    b[0, 0] = 1e-7         # inside the tolerance
    c = compare_gradients(SPEC, ("analytic", "numeric"), a, b, TOL)
    assert not c.passed and c.failed == 1
    assert c.worst_index == (1, 3) and c.worst_block == "z"
    assert c.blocks_failed == {"r": 0, "z": 1, "h": 0}
    assert c.describe_worst() == "U0[1, 3] (block z): analytic = 0, numeric = 0.5"


def test_nan_fails_and_ranks_worst():
    a = np.ones((2, 6))
    b = a.copy()
    b[0, 5] = np.nan
    b[1, 0] = 2.0
    c = compare_gradients(SPEC, ("analytic", "autodiff"), a, b, TOL)
    assert c.failed == 2 and c.worst_index == (0, 5)
    assert c.as_dict()["max_abs_error"] == "inf"


def test_identical_gradients_pass():
    a = np.random.default_rng(0).normal(size=(2, 6))
    assert compare_gradients(SPEC, ("analytic", "numeric"), a, a.copy(), TOL).passed


def test_kinks_excuse_only_their_elements():
    a = np.zeros((2, 6))
    b = a.copy()
    b[0, 0] = b[0, 1] = 1.0
    kinks = np.zeros((2, 6), bool)
    kinks[0, 0] = True
    c = compare_gradients(SPEC, ("analytic", "numeric"), a, b, TOL, kinks)
    assert c.failed == 1 and c.kinks == 1 and c.worst_index == (0, 1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compare_gradients(SPEC, ("analytic", "numeric"), np.zeros((6, 2)), np.zeros((2, 6)), TOL)


@pytest.mark.parametrize("passed, odd", [
    ({("analytic", "numeric"): False, ("analytic", "autodiff"): False,
      ("numeric", "autodiff"): True}, "analytic"),
    ({("analytic", "numeric"): False, ("analytic", "autodiff"): True,
      ("numeric", "autodiff"): False}, "numeric"),
    ({("analytic", "numeric"): True, ("analytic", "autodiff"): False,
      ("numeric", "autodiff"): False}, "autodiff"),
    ({("analytic", "numeric"): False, ("analytic", "autodiff"): False,
      ("numeric", "autodiff"): False}, None),
    ({("analytic", "numeric"): False, ("analytic", "autodiff"): True,
      ("numeric", "autodiff"): True}, None),
    ({("analytic", "numeric"): False}, None),
])
def test_odd_one_out(passed, odd):
    assert odd_one_out(passed) == odd


@pytest.mark.parametrize("text, message", [
    ("analytic", "at least two"),
    ("analytic,analytic", "twice"),
    ("analytic,symbolic", "unknown oracle 'symbolic'"),
    ("", "has an empty name"),
    ("analytic,numeric,", "has an empty name"),
    ((), "at least two"),
])
def test_bad_oracle_lists(text, message):
    with pytest.raises(ValueError, match=message):
        parse_oracles(text)


def test_oracles_are_put_in_canonical_order():
    assert parse_oracles("autodiff, analytic") == ("analytic", "autodiff")


@pytest.mark.parametrize("shape, blocks, axis, says", [
    ((3, 6), ("a", "b"), 2, "its blocks lie along axis 2, which a parameter of shape (3, 6)"),
    ((6,), ("a", "b"), -2, "along axis -2"),
    ((3, 6), (), 1, "blocks names no block"),
    ((3, 6), ("a", "b", "c", "d"), 1, "axis 1 of length 6 does not split into 4 blocks"),
])
def test_bad_blocks_are_named(shape, blocks, axis, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        ParamSpec("W", shape, blocks, axis)
