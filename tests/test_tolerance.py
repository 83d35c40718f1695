import numpy as np
import pytest

from gradcheck.tolerance import Tolerance, agree, resolve_tolerance


def test_float64_defaults_and_overrides():
    assert resolve_tolerance(np.float64) == Tolerance(1e-6, 1e-5)
    assert resolve_tolerance(np.float64, atol=1e-9).atol == 1e-9
    tol = resolve_tolerance(np.float32, atol={np.float32: 5e-3}, rtol={"float64": 1.0})
    assert tol == Tolerance(5e-3, 1e-3)   # dict overrides only the dtype it names


@pytest.mark.parametrize("bad", [-1e-6, float("nan"), float("inf")])
def test_negative_or_non_finite_tolerance_is_refused(bad):
    with pytest.raises(ValueError, match="atol"):
        resolve_tolerance(np.float64, atol=bad)
    with pytest.raises(ValueError, match="rtol"):
        resolve_tolerance(np.float64, rtol=bad)


def test_zero_makes_a_purely_relative_or_absolute_test():
    assert resolve_tolerance(np.float64, atol=0.0) == Tolerance(0.0, 1e-5)
    assert resolve_tolerance(np.float64, rtol=0.0) == Tolerance(1e-6, 0.0)
    assert not agree(1e-9, 0.0, Tolerance(0.0, 1e-5))


@pytest.mark.parametrize("rtol", [1.0, 3.0, {"float64": 1.0}])
def test_rtol_of_one_or_more_is_refused(rtol):
    # with rtol >= 1, |0 - b| <= rtol |b| holds for every b: a zero gradient would pass
    assert agree(0.0, 123.0, Tolerance(0.0, 1.0))
    with pytest.raises(ValueError, match="must be less than 1"):
        resolve_tolerance(np.float64, rtol=rtol)


def test_zero_bound_is_where_a_zero_gradient_agrees():
    tol = Tolerance(atol=1e-3, rtol=0.5)
    assert tol.zero_bound == 2e-3
    assert agree(0.0, tol.zero_bound, tol) and not agree(0.0, 1.01 * tol.zero_bound, tol)


def test_integer_dtype_has_no_defaults():
    with pytest.raises(ValueError, match="int64"):
        resolve_tolerance(np.int64)


def test_bound_is_atol_plus_rtol_times_larger_magnitude():
    tol = Tolerance(atol=1e-3, rtol=1e-1)
    # bound at (10, 9) is 1e-3 + 1e-1 * 10 = 1.001 >= 1
    assert agree(10.0, 9.0, tol)
    assert not agree(10.0, 8.9, tol)


def test_nan_and_inf_never_agree():
    tol = Tolerance(atol=1e300, rtol=1e300)
    a = np.array([np.nan, np.inf, -np.inf, 0.0])
    assert agree(a, a, tol).tolist() == [False, False, False, True]
    assert not agree(np.array([np.inf]), np.array([1.0]), tol).any()
