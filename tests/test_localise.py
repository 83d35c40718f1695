"""Localisation: which gate block, which time step, where the recursion goes wrong."""

import numpy as np
import pytest

from cells.zoo.gru_bugs import BROKEN_GRUS
from cells.gru import GRU, GRUConfig
from gradcheck import check_gradients
from gradcheck.localise import format_steps, localise
from gradcheck.masks import make_mask
from gradcheck.tolerance import resolve_tolerance


def run(cls, seed=0, steps=6, mask=None, **fields):
    cell = cls(GRUConfig(**fields))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, steps, 3, mask)
    tols = {name: resolve_tolerance() for name in params}
    return localise(cell, params, batch, cell.param_specs(), tols, seed=seed)


@pytest.mark.parametrize("fields", [dict(), dict(layers=2, reset="after"),
                                    dict(embedding=True, readout="mean", gate="hard")], ids=str)
def test_correct_cell_is_green_everywhere(fields):
    loc = run(GRU, **fields)
    assert not loc.wrong_steps() and loc.entry() is None
    assert all(t is None for t in loc.first_divergence().values())
    assert loc.step_excess.max() < 1e-2 and loc.adjoint_excess.max() < 1e-2
    assert loc.sentence() == ("every per-step gate block agrees at every step; "
                              "dL/dh agrees at every step")


@pytest.mark.parametrize("layers", [1, 2])
def test_reset_gate_bug_enters_in_block_r_at_the_last_step(layers):
    loc = run(BROKEN_GRUS["reset-gate-derivative"], layers=layers)
    t, layer, rows = loc.entry()
    assert (t, layer) == (5, layers - 1)
    assert {block for _, block in rows} == {"r"}
    # h_{-1} = 0 hides the reset gate at step 0; every later step is wrong
    assert loc.wrong_steps()[(f"U{layers - 1}", "r")] == [1, 2, 3, 4, 5]
    # the adjoint first goes wrong one step back, where the reset gate's path joins
    assert loc.first_divergence()[layers - 1] == 4
    assert f"the error enters at t = 5 in layer {layers - 1}, block r" in loc.sentence()


def test_wrapped_index_is_localised_to_step_zero_with_a_clean_recursion():
    loc = run(BROKEN_GRUS["wrapped-time-index"], layers=2)
    assert loc.entry()[0] == 0
    assert all(steps == [0] for steps in loc.wrong_steps().values())
    assert all(t is None for t in loc.first_divergence().values())
    assert "dL/dh agrees at every step" in loc.sentence()


def test_elementwise_product_touches_only_U_and_not_the_recursion():
    loc = run(BROKEN_GRUS["elementwise-product"])
    assert {name for name, _ in loc.wrong_steps()} == {"U0"}
    assert all(t is None for t in loc.first_divergence().values())


def test_ignored_mask_enters_at_the_masked_step():
    mask = np.ones((6, 3))
    mask[2, 1] = 0
    loc = run(BROKEN_GRUS["mask-ignored-in-backward"], mask=mask)
    assert loc.entry()[0] == 2
    assert loc.first_divergence()[0] == 1


def test_check_result_carries_the_sentence():
    cell = BROKEN_GRUS["reset-gate-derivative"](GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    doc = result.as_dict()
    assert doc["localisation"]["sentence"].startswith("the error enters at t = 4 in layer 0, block r")
    assert {"parameter": "U0", "block": "r", "steps": [1, 2, 3, 4]} in doc["localisation"]["wrong_steps"]


def test_truncated_cells_are_not_localised_in_time():
    assert run(GRU, truncate=2, truncation="tail") is None


@pytest.mark.parametrize("steps, total, text", [
    ([0], 5, "step 0"), ([0, 1, 2, 4], 5, "steps 0-2, 4"), ([0, 1, 2], 3, "every step"),
    ([3, 5], 6, "steps 3, 5"),
])
def test_format_steps(steps, total, text):
    assert format_steps(steps, total) == text


class InPlaceStepGRU(GRU):
    """A correct GRU whose step interface writes the new state into the old one."""

    def step(self, params, state, x_t, m_t):
        new = super().step(params, state, x_t, m_t)
        for old, value in zip(state, new):
            old[...] = value
        return state


def test_a_step_that_updates_its_state_in_place_localises_as_the_reference():
    # each perturbed run starts from the unperturbed state at its step: a step that
    # overwrote that state would corrupt every later run
    mine, reference = run(InPlaceStepGRU, layers=2), run(GRU, layers=2)
    assert np.array_equal(mine.step_values, reference.step_values)
    assert np.array_equal(mine.adjoint_values, reference.adjoint_values)
