"""The NumPy reference GRU: hand BPTT against finite differences in every variant."""

import numpy as np
import pytest

from cells.activations import log_softmax
from cells.gru import GRU, GRUConfig
from conftest import make_case
from gradcheck import check_gradients


def test_analytic_matches_numeric_in_every_variant(config):
    cell = GRU(config)
    mask = np.ones((5, 3))
    mask[3:, 1] = 0            # a right-padded sequence
    mask[1, 2] = 0             # a hole
    params, data = make_case(cell, seed=1, mask=mask)
    result = check_gradients(cell, params, data, oracles="analytic,numeric", seed=1)
    assert result.passed, result.summary()
    # the errors are rounding-sized, far inside the tolerance, not just under it
    assert max(c.max_abs_error for c in result.comparisons) < 1e-8


def test_gradient_does_not_mutate_its_inputs(config):
    cell = GRU(config)
    params, data = make_case(cell)
    before = {k: v.copy() for k, v in params.items()}, data.copy()
    cell.gradient(params, data)
    for k, v in before[0].items():
        assert np.array_equal(params[k], v), k
    assert np.array_equal(data.x, before[1].x) and np.array_equal(data.y, before[1].y)


def test_reset_conventions_differ():
    # the same parameters give different losses under the two conventions
    before, after = GRU(GRUConfig(reset="before")), GRU(GRUConfig(reset="after"))
    params, data = make_case(after)
    shared = {k: v for k, v in params.items() if not k.startswith("bn")}
    assert abs(before.loss(shared, data) - after.loss(params, data)) > 1e-6


def test_hard_sigmoid_gate_is_clipped_linear():
    from cells.activations import hard_sigmoid, hard_sigmoid_grad
    a = np.array([-3.0, -2.5, 0.0, 1.0, 2.5, 3.0])
    assert hard_sigmoid(a).tolist() == [0.0, 0.0, 0.5, 0.7, 1.0, 1.0]
    assert hard_sigmoid_grad(a, hard_sigmoid(a)).tolist() == [0, 0, 0.2, 0.2, 0, 0]


def test_saturated_gates_overflow_exp_silently_in_every_pass():
    # the steps' sigmoid leaves exp's overflow to the loops around them (LOOP_GATES):
    # every path that runs steps must silence it, and the gate must still be 0
    import warnings

    from cells.activations import sigmoid, sigmoid_in_loop
    from cells.lstm import LSTM, LSTMConfig
    a = np.full((2, 3), -800.0)
    with pytest.warns(RuntimeWarning, match="overflow"):
        sigmoid_in_loop(a)                                  # unguarded, on its own
    for cell in (GRU(GRUConfig(layers=2)), LSTM(LSTMConfig(layers=2))):
        params, data = make_case(cell)
        params["b0"][:] = -1000.0                           # every gate of layer 0 saturates at 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss, _ = cell.loss_and_gradient(params, data)
            assert cell.loss(params, data) == loss
            stack = {k: np.broadcast_to(v, (2,) + v.shape) for k, v in params.items()}
            assert cell.losses(stack, data).tolist() == [loss, loss]
            state = cell.step(params, cell.initial_state(data.size), data.x[0], data.mask[0])
        assert np.isfinite(state[0]).all()
    with np.errstate(over="ignore"):
        assert sigmoid_in_loop(a).tolist() == sigmoid(a).tolist() == [[0.0] * 3] * 2

@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 0, "hidden_size=0 must be a positive integer"),
    ("layers", -1, "layers=-1"),
    ("reset", "sideways", "reset='sideways' is not one of before, after"),
    ("gate", "relu", "gate='relu'"),
    ("readout", "max", "readout='max'"),
])
def test_bad_config_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        GRUConfig(**{field: value})


def test_bad_batch_is_refused():
    cell = GRU(GRUConfig())
    params, data = make_case(cell)
    data.x = data.x[..., :2]
    with pytest.raises(ValueError, match=r"x must be \(T, B, 4\)"):
        cell.check_inputs(params, data)
    params, data = make_case(cell)
    del params["U0"]
    with pytest.raises(ValueError, match="missing U0"):
        cell.check_inputs(params, data)


@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("layers", [1, 2])
def test_update_new_convention_matches_numeric(reset, layers):
    cell = GRU(GRUConfig(update="new", reset=reset, layers=layers, readout="mean"))
    mask = np.ones((5, 3))
    mask[2:, 0] = 0
    params, data = make_case(cell, seed=4, mask=mask)
    assert check_gradients(cell, params, data, oracles="analytic,numeric").passed
    # and it is a different cell from update="old" on the same parameters
    old = GRU(GRUConfig(update="old", reset=reset, layers=layers, readout="mean"))
    assert abs(old.loss(params, data) - cell.loss(params, data)) > 1e-6


def _both_backward_paths(cell, params, data, monkeypatch):
    """The gradient by the linear recursion (small layers, cells.gru.LINEAR_BYTES) and
    rule by rule, step by step (large ones), and how often each ran: the linear path's
    calls of _step_slopes (its coefficients), the other's of _layer_step_backward."""
    import cells.gru
    calls = {"_step_slopes": 0, "_layer_step_backward": 0}

    def counted(name):
        original = getattr(GRU, name)

        def spy(self, *args):
            calls[name] += 1
            return original(self, *args)
        monkeypatch.setattr(GRU, name, spy)

    counted("_step_slopes")
    counted("_layer_step_backward")
    linear = cell.gradient(params, data)
    linear_calls = calls["_step_slopes"]
    assert calls["_layer_step_backward"] == 0           # no step ran rule by rule
    monkeypatch.setattr(cells.gru, "LINEAR_BYTES", -1)
    stepwise = cell.gradient(params, data)
    monkeypatch.undo()
    return linear, stepwise, linear_calls, calls["_layer_step_backward"]


def _assert_same_to_rounding(a, b):
    for k in a:
        scale = max(np.abs(a[k]).max(), np.abs(b[k]).max(), 1e-300)
        np.testing.assert_allclose(a[k], b[k], rtol=1e-11, atol=1e-14 * scale, err_msg=k)


def test_linear_recursion_and_rule_by_rule_give_the_same_gradient(config, monkeypatch):
    # small layers run the backward as a linear recursion, its coefficients computed for
    # all steps at once; large ones rule by rule, step by step (cells.gru.LINEAR_BYTES):
    # two derivations of one gradient, the same to rounding, masks included
    cell = GRU(config)
    mask = np.ones((5, 3))
    mask[3:, 1] = 0
    mask[1, 2] = 0
    params, data = make_case(cell, seed=2, mask=mask)
    linear, stepwise, linear_calls, step_calls = _both_backward_paths(cell, params, data,
                                                                      monkeypatch)
    backward_passes = 5 if cell.truncation.kind == "window" else 1
    assert linear_calls == backward_passes * config.layers      # all steps at once
    assert step_calls == sum(len(range(cell._window_start(t, 5), t + 1))
                             for t in ([4] if backward_passes == 1 else range(5))) * config.layers
    _assert_same_to_rounding(linear, stepwise)


# a configuration that wakes each broken GRU whose bug is in the backward pass
# (blog-output-mutated's is in the forward cache)
BUG_CONFIGS = {
    "reset-gate-derivative": {}, "wrapped-time-index": {}, "elementwise-product": {},
    "off-by-one-window": dict(truncate=2), "mask-ignored-in-backward": {},
    "blog-reset-delta": {}, "blog-state-adjoint-order": {},
    "blog-output-delta-every-layer": dict(layers=2), "blog-hard-sigmoid-slope": dict(gate="hard"),
    "blog-embedding-word": dict(embedding=True), "blog-empty-loop": {},
}
# bugs of the reset-before form's backward pass: they sleep with reset "after"
BEFORE_ONLY = ("blog-reset-delta", "blog-state-adjoint-order")


@pytest.mark.parametrize("bug, reset", [(bug, reset) for bug in sorted(BUG_CONFIGS)
                                        for reset in ("before", "after")
                                        if not (bug in BEFORE_ONLY and reset == "after")])
def test_every_broken_gru_is_broken_alike_in_both_backward_paths(bug, reset, monkeypatch):
    # the size of a layer picks the backward path: a bug must not hide in either
    from cells.zoo.gru_bugs import BROKEN_GRUS
    config = GRUConfig(reset=reset, hidden_size=4, **BUG_CONFIGS[bug])
    cell = BROKEN_GRUS[bug](config)
    mask = np.ones((5, 3))
    mask[1, 2] = 0                                          # a masked step before unmasked ones
    params, data = make_case(cell, seed=3, mask=mask)
    assert getattr(cell, "dormant", lambda b: None)(data) is None   # every case wakes its bug
    linear, stepwise, _, _ = _both_backward_paths(cell, params, data, monkeypatch)
    _assert_same_to_rounding(linear, stepwise)
    right = GRU(config).gradient(params, data)
    assert max(np.abs(linear[k] - right[k]).max() for k in right) > 1e-6


@pytest.mark.parametrize("classes", [1, 2, 3, 8, 9, 40])
def test_log_softmax_short_and_long_class_axes(classes):
    # up to SHORT_AXIS classes are reduced class by class, more by NumPy's reductions
    rng = np.random.default_rng(classes)
    logits = rng.normal(scale=5.0, size=(4, 6, classes))
    logits[0, 0] = 800.0 * np.sign(rng.normal(size=classes))       # exp overflows unshifted
    got = log_softmax(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    want = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.exp(got).sum(axis=-1), 1.0, rtol=1e-14)
    assert np.all(np.isfinite(got))


class OwnArraysGRU(GRU):
    """A GRU whose step ignores the arrays it is given and returns new ones."""

    def _layer_step(self, l, params, h, xp_t, m_t, out=None, blocks=None):
        return super()._layer_step(l, params, h, xp_t, m_t)


@pytest.mark.parametrize("fields", [dict(), dict(gate="hard", reset="before", layers=2)],
                         ids=str)
def test_a_step_that_makes_its_own_arrays_gives_the_same_gradient(fields):
    # the backward pass reads the layer's (T, ...) arrays; a step that did not write into
    # them has its results copied there
    mask = np.ones((5, 3))
    mask[3:, 1] = 0
    ref = GRU(GRUConfig(**fields))
    params, data = make_case(ref, seed=3, mask=mask)
    want = ref.loss_and_gradient(params, data)
    got = OwnArraysGRU(GRUConfig(**fields)).loss_and_gradient(params, data)
    assert got[0] == want[0]
    for k in want[1]:
        assert np.array_equal(got[1][k], want[1][k]), k


@pytest.mark.parametrize("reset", ["before", "after"])
def test_tail_state_adjoints_are_zero_before_the_window_whatever_ran_before(reset):
    # the backward's per-step arrays come from a shared workspace: a full-BPTT pass of
    # another cell fills rows that a tail-truncated pass leaves alone, and its recorded
    # state adjoints of the steps before the window must still be 0
    cell = GRU(GRUConfig(reset=reset, truncate=2, truncation="tail", layers=2))
    params, data = make_case(cell, steps=6)
    GRU(GRUConfig(reset=reset, layers=2)).loss_and_gradient(params, data)
    adjoints = cell.gradient_details(params, data)["state_adjoints"]
    for l, a in enumerate(adjoints):
        assert np.all(a[:3] == 0.0), l
        assert np.any(a[4:] != 0.0), l


def test_a_saturated_update_gate_keeps_its_tiny_gradients_in_both_backward_paths(monkeypatch):
    # update "new", z ~ 1e-35: 1 - k = z.  Written dh' - dh' k, the rule-by-rule path
    # cancelled to exactly 0 where k rounds to 1; both paths must keep dh' z
    import cells.gru
    cell = GRU(GRUConfig(update="new", hidden_size=1, input_size=1, classes=2))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    params["b0"][1] = -80.0                                 # a_z ~ -80
    data = cell.sample_batch(rng, 2, 1)
    linear = cell.gradient(params, data)
    monkeypatch.setattr(cells.gru, "LINEAR_BYTES", -1)
    stepwise = cell.gradient(params, data)
    for grads in (linear, stepwise):
        assert np.all(grads["W0"] != 0.0) and np.all(grads["U0"][:, [0, 2]] != 0.0)
    for k in linear:
        np.testing.assert_allclose(stepwise[k], linear[k], rtol=1e-10, atol=0, err_msg=k)
