import numpy as np
import pytest

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


# ------------------------------------------------ complex step: trusted only where it agrees
def _layer_norm_gru(bug: bool):
    """A GRU subclass that layer-normalises the top states before the readout (np.std:
    not complex-safe, though the class inherits supports_complex_step).  ``bug``: its
    backward drops the variance term, the complex step's own blind spot."""
    from cells.gru import GRU, GRUConfig

    class LayerNormGRU(GRU):
        def _readout(self, params, top, batch):
            mu, sd = top.mean(axis=-1, keepdims=True), top.std(axis=-1, keepdims=True)
            y = (top - mu) / sd
            loss, rc = super()._readout(params, y, batch)
            return loss, dict(rc, y=y, sd=sd)

        def _readout_backward(self, params, top, batch, rc, grads):
            dy = super()._readout_backward(params, rc["y"], batch, rc, grads)
            dy = dy - dy.mean(axis=-1, keepdims=True)
            if not bug:
                dy = dy - rc["y"] * (dy * rc["y"]).mean(axis=-1, keepdims=True)
            return dy / rc["sd"]

    return LayerNormGRU(GRUConfig())


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("bug", [False, True])
def test_complex_step_is_refused_where_it_disagrees_with_central_differences(mode, bug):
    from gradcheck import check_gradients
    from gradcheck.finite_differences import ComplexStepError

    cell = _layer_norm_gru(bug)
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    # the central differences see the variance term: the right backward passes, the bug fails
    central = check_gradients(cell, params, batch, oracles="analytic,numeric", mode=mode)
    assert central.passed is not bug, central.summary()
    # np.std of a complex array is real: the complex step would hold the variance fixed,
    # agree with the buggy backward and pass it; it is refused instead, in either mode
    with pytest.raises(ComplexStepError, match="disagrees with central differences"):
        check_gradients(cell, params, batch, oracles="analytic,numeric", mode=mode,
                        numeric_method="complex")


def test_complex_step_agrees_on_complex_safe_losses():
    from gradcheck.finite_differences import complex_step_disagreement

    params = {"w": np.array([0.3, -1.2, 2.0])}
    assert complex_step_disagreement(lambda p: np.sum(np.tanh(p["w"]) ** 3), params) is None
    said = complex_step_disagreement(lambda p: np.sum(np.abs(p["w"]) ** 2 * p["w"]), params)
    assert said is not None and "against" in said
    said = complex_step_disagreement(lambda p: float(np.real(np.sum(p["w"] ** 2))), params)
    assert said is not None and "real number" in said


# ----------------------------------------------- kink flags: kinks, not small derivatives
def test_a_small_derivative_on_a_curve_is_judged_not_excused_as_a_kink():
    from gradcheck import Batch, check_gradients, function_cell

    # L = sum w^2 / 2 + sum relu-like |w - k|; w_0 = 1e-4 sits on a smooth curve with a
    # small slope (its one-sided differences differ by h L'' = 6e-6, above 1e-3 |L'|),
    # w_1 on the kink of |w - w_1|, w_2 a third of its step away from |w - k|'s kink
    w = np.array([1e-4, 0.7, -0.3])
    h2 = float(element_steps(w[2:], STEP_SCALE)[0]) / 3.0
    kinks_at = np.array([5.0, 0.7, -0.3 + h2])

    def loss(p, batch):
        return float(np.sum(p["w"] ** 2) / 2 + np.sum(np.abs(p["w"][1:] - kinks_at[1:])))

    def wrong(p, batch):                     # the curve's element wrong by 0.5; the kinks' fine
        g = p["w"] + np.concatenate([[0.0], np.sign(p["w"][1:] - kinks_at[1:])])
        g[0] += 0.5
        return {"w": g}

    batch = Batch(np.zeros((1, 1, 1)), np.zeros((1, 1), int), np.ones((1, 1)))
    cell = function_cell(loss=loss, gradient=wrong, params={"w": w})
    result = check_gradients(cell, {"w": w}, batch, oracles="analytic,numeric")
    (comp,) = result.comparisons
    assert not result.passed and comp.failed == 1 and comp.worst_index == (0,)


def test_unflagging_keeps_real_kinks_and_the_values():
    from gradcheck.finite_differences import unflag_curvature

    # w_0 on a kink, w_1 a small slope on a curve, w_2 smooth, w_3 a third of its step
    # from a kink (there the one-sided gap halves with the step, as on a curve)
    w = np.array([0.0, 1e-4, 2.0, -0.3])
    third = float(element_steps(w[3:], STEP_SCALE)[0]) / 3.0

    def loss(p):
        v = p["w"]
        return float(np.abs(v[0]) + v[1] ** 2 / 2 + np.cos(v[2]) + np.abs(v[3] + 0.3 - third))

    found = central_differences(loss, {"w": w})
    assert found["w"].kinks.tolist() == [True, True, False, True]   # the curve's slope too
    value = found["w"].value.copy()
    assert unflag_curvature(loss, {"w": w}, found) is found
    assert found["w"].kinks.tolist() == [True, False, False, True]
    assert np.array_equal(found["w"].value, value)


@pytest.mark.parametrize("seed", range(6))
def test_complex_step_guard_sees_a_small_term_spread_over_many_elements(seed):
    from gradcheck.finite_differences import complex_step_disagreement

    # 3e-3 ||W||: np.linalg.norm drops the imaginary part; along a random direction
    # through 600 elements its share is small, and a guard held to the check's own
    # tolerance let it pass at seed 2
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 4, 20))
    params = {"W": rng.normal(size=(20, 30)) * 0.3}

    def loss(p):
        return np.tanh(x @ p["W"]).sum() + 3e-3 * np.linalg.norm(p["W"])

    assert complex_step_disagreement(loss, params, seed=seed) is not None
    assert complex_step_disagreement(lambda p: np.tanh(x @ p["W"]).sum(), params,
                                     seed=seed) is None


# ------------------------------------------------ the step-size curve
def _curve_case(config, truncate=-1):
    from cells.gru import GRU, GRUConfig
    from gradcheck.masks import make_mask
    cell = GRU(GRUConfig(truncate=truncate, **config))
    rng = np.random.default_rng(5)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3, make_mask("random", rng, 5, 3))
    return cell, params, batch


@pytest.mark.parametrize("config, truncate, name, index", [
    (dict(), -1, "U0", (2, 7)),
    (dict(reset="after", readout="mean"), -1, "bn0", (3,)),
    (dict(embedding=True, layers=2), -1, "E", (4, 1)),       # the embedding's row probes
    (dict(), 2, "W0", (1, 5)),                                  # a truncation surrogate's losses
])
def test_the_vectorised_step_size_curve_is_the_one_by_one_curve(config, truncate, name, index):
    from gradcheck.finite_differences import numeric_loss, step_size_curve, vectorised_losses
    cell, params, batch = _curve_case(config, truncate)
    loss = numeric_loss(cell, params, batch)
    losses = vectorised_losses(cell, params, batch, loss)
    assert losses is not None
    reference = cell.gradient(params, batch)[name][index]
    one_by_one = step_size_curve(loss, params, name, index, reference)
    # in passes of 50 probes, and of 2 (a stack limit below one pass)
    assert step_size_curve(loss, params, name, index, reference, cell=cell,
                           losses=losses) == one_by_one
    import gradcheck.finite_differences as fd
    saved, fd.STACK_BYTES = fd.STACK_BYTES, params[name].nbytes * 3
    try:
        assert step_size_curve(loss, params, name, index, reference, cell=cell,
                               losses=losses) == one_by_one
    finally:
        fd.STACK_BYTES = saved
    # and the curve is the V it should be: the error is smallest near eps^(1/3), far
    # below the error of the largest and of the smallest steps
    errors = np.array(one_by_one["errors"])
    best = int(np.argmin(errors))
    assert 1e-8 < one_by_one["steps"][best] < 1e-3
    assert errors[best] < 1e-3 * min(errors[0], errors[-1])


def test_vectorised_losses_stand_in_only_where_they_compute_the_loss():
    from gradcheck.finite_differences import numeric_loss, vectorised_losses
    cell, params, batch = _curve_case(dict())
    assert vectorised_losses(cell, params, batch, numeric_loss(cell, params, batch)) is not None
    # another function than the cell's loss: its losses would not be this loss's
    other = lambda p: float(cell.loss(p, batch)) * 2.0          # noqa: E731
    assert vectorised_losses(cell, params, batch, other) is None
    # a cell whose loss overrides the reference's: its losses would still run the reference's

    class Scaled(type(cell)):
        def loss(self, params, batch):
            return 2.0 * super().loss(params, batch)

    scaled = Scaled(cell.config)
    assert not scaled.losses_match_loss
    assert vectorised_losses(scaled, params, batch, numeric_loss(scaled, params, batch)) is None
