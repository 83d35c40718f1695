"""The seeds' real bugs: each caught at default settings and localised to block and steps."""

import numpy as np
import pytest

from cells.zoo.gru_bugs import SEED_BLOG_BUGS
from conftest import count_broken
from gradcheck import Batch, check_builtin, check_gradients, function_cell


def check(bug, **config):
    # the CLI's defaults: T = 5, B = 3, seed 0, all three oracles
    return check_builtin("gru", bug=bug, **config)


def failing_params(result):
    return {c.parameter for c in result.comparisons if not c.passed}


def test_every_blog_bug_is_in_the_zoo():
    assert len(SEED_BLOG_BUGS) == 9


def test_wrapped_time_index_enters_at_step_0():
    r = check("wrapped-time-index", layers=2)
    assert not r.passed and r.odd_one_out() == "analytic"
    t, layer, rows = r.localisation.entry()
    assert t == 0 and layer == 1
    assert all(steps == [0] for steps in r.localisation.wrong_steps().values())


def test_blog_reset_delta_enters_in_block_r_of_the_top_layer():
    r = check("blog-reset-delta", layers=2)
    assert not r.passed and r.odd_one_out() == "analytic"
    t, layer, rows = r.localisation.entry()
    assert (t, layer) == (4, 1) and {b for _, b in rows} == {"r"}
    assert r.localisation.wrong_steps()[("U1", "r")] == [1, 2, 3, 4]


def test_state_adjoint_product_order_is_caught_in_the_carried_adjoint():
    # (da_h * r) U_h^T for (da_h U_h^T) * r: only dL/dh_{t-1} is wrong, so the last
    # step's own contributions are right and the adjoint diverges from step T - 2 down
    r = check("blog-state-adjoint-order")
    assert not r.passed and r.odd_one_out() == "analytic"
    assert r.localisation.first_divergence() == {0: 3}
    assert all(4 not in steps for steps in r.localisation.wrong_steps().values())
    wrong = r.localisation.wrong_steps()
    assert wrong[("W0", "h")] == [0, 1, 2, 3]
    assert wrong[("U0", "h")] == [1, 2, 3]     # h_{-1} = 0: U's step-0 share is 0 either way


def test_elementwise_product_is_only_U_and_the_recursion_is_clean():
    r = check("elementwise-product", layers=2)
    assert failing_params(r) == {"U0", "U1"}
    assert all(t is None for t in r.localisation.first_divergence().values())


def test_output_delta_in_every_layer_spares_the_top_layer():
    r = check("blog-output-delta-every-layer", layers=2)
    assert failing_params(r) == {"W0", "U0", "b0"}
    t, layer, _ = r.localisation.entry()
    assert layer == 0


def test_hard_sigmoid_slope_from_the_output_shows_in_the_gate_blocks():
    # the README's example: "the error enters at t = 4 in layer 0, block r of W0, U0, b0"
    r = check("blog-hard-sigmoid-slope", gate="hard")
    assert not r.passed and r.odd_one_out() == "analytic"
    t, layer, rows = r.localisation.entry()
    assert (t, layer) == (4, 0) and rows == [("W0", "r"), ("U0", "r"), ("b0", "r")]
    assert "block r of W0, U0, b0" in r.localisation.sentence()


def test_embedding_word_is_only_E():
    r = check("blog-embedding-word", embedding=True, layers=2)
    assert failing_params(r) == {"E"}
    t, layer, rows = r.localisation.entry()
    assert layer == -1 and rows == [("E", None)]
    assert "in the embedding" in r.localisation.sentence()


def test_empty_truncation_loop_zeroes_every_recurrent_gradient():
    r = check("blog-empty-loop", layers=2)
    assert failing_params(r) == {"W0", "U0", "b0", "W1", "U1", "b1"}
    for name in ("W0", "U0", "b0", "W1", "U1", "b1"):
        assert not np.any(r.gradients["analytic"][name])


def test_output_mutated_by_backward_is_reported_as_such():
    r = check("blog-output-mutated")
    assert not r.passed
    assert r.defects and "loss is not a function of its inputs" in r.defects[0]
    assert r.summary().startswith("fail: the cell's loss is not a function of its inputs")


@pytest.mark.parametrize("bug", SEED_BLOG_BUGS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_caught_with_other_seeds(bug, seed):
    config = {"layers": 2, "embedding": True, "gate": "hard" if "hard" in bug else "sigmoid"}
    r = check_builtin("gru", bug=bug, seed=seed, oracles="analytic,numeric", **config)
    assert count_broken(r), r.summary()


def test_a_cell_that_changes_its_parameters_in_place_is_named():
    params = {"W": np.ones((2, 3))}
    batch = Batch(np.ones((4, 1, 2)), np.zeros((4, 1), int), np.ones((4, 1)))

    def loss(p, b):
        return float((b.x @ p["W"]).sum())

    def gradient(p, b):
        g = np.einsum("tbd,tbk->dk", b.x, np.ones((4, 1, 3)))
        p["W"] -= 0.1 * g               # an optimiser step inside the backward pass
        return {"W": g}

    r = check_gradients(function_cell(loss=loss, gradient=gradient, params=params), params, batch)
    assert not r.passed
    assert "the analytic oracle changed parameter W in place" in r.summary()
    assert np.array_equal(params["W"], np.ones((2, 3)))     # put back
