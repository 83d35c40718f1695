import numpy as np

from gradcheck.finite_differences import STEP_SCALE, central_differences, element_steps


def test_step_is_relative_and_exactly_representable():
    theta = np.array([0.0, 1e-3, 3.0, -1e5])
    h = element_steps(theta)
    assert np.allclose(h, STEP_SCALE * np.maximum(1, np.abs(theta)), rtol=1e-6)
    assert np.all((theta + h) - theta == h)


def test_cubic_gradient_matches_closed_form():
    # L = sum(a^3) + a0 * a1: dL/da = 3 a^2 + (a1, a0, 0)
    a = np.array([0.3, -1.7, 25.0])
    got = central_differences(lambda p: float(np.sum(p["a"] ** 3) + p["a"][0] * p["a"][1]),
                              {"a": a})["a"]
    want = 3 * a ** 2 + np.array([a[1], a[0], 0.0])
    assert np.allclose(got.value, want, rtol=1e-8, atol=1e-8)
    assert not got.kinks.any()


def test_params_are_not_modified():
    p = {"a": np.array([1.0, 2.0])}
    central_differences(lambda q: float(np.sum(q["a"] ** 2)), p)
    assert np.array_equal(p["a"], [1.0, 2.0])


def test_kink_is_flagged_and_smooth_points_are_not():
    # |x| has a kink at 0; the central difference there is 0, the one-sided ones are -1 and 1
    got = central_differences(lambda p: float(np.sum(np.abs(p["x"]))),
                              {"x": np.array([0.0, 0.5, -2.0])})["x"]
    assert got.kinks.tolist() == [True, False, False]
    assert np.allclose(got.value[1:], [1.0, -1.0])
