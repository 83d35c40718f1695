"""Masks: padded and masked steps contribute exactly zero gradient."""

import numpy as np
import pytest

from cells.zoo.gru_bugs import MaskIgnoredInBackwardGRU
from cells.gru import GRU, GRUConfig
from gradcheck import Batch, check_gradients
from gradcheck.batch import validate_mask
from gradcheck.check import CheckCannotFail
from gradcheck.masks import make_mask, mask_from_lengths

VARIANTS = [dict(readout=r, embedding=e, layers=l, reset=s)
            for r in ("lm", "mean") for e in (False, True) for l in (1, 2)
            for s in ("before", "after")]


def case(config, mask, seed=0):
    cell = GRU(config)
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, *mask.shape, mask)


def sequence(batch, b, keep):
    """Sequence b alone, with only the steps in ``keep``, unmasked."""
    y = batch.y[keep, b][:, None] if batch.y.ndim == 2 else batch.y[b:b + 1]
    return Batch(batch.x[keep, b][:, None], y, np.ones((len(keep), 1)))


@pytest.mark.parametrize("fields", VARIANTS, ids=str)
def test_masked_steps_are_the_same_as_removed_steps(fields):
    # a masked step carries the state and drops its loss term, so the batch gradient is
    # (1/B) sum_b of the gradients of each sequence with its masked steps deleted
    mask = np.array([[1, 1, 0, 1],
                     [1, 0, 0, 1],
                     [1, 1, 0, 0],
                     [0, 1, 0, 1],
                     [1, 1, 0, 1]], dtype=float)      # holes, right padding, an all-masked sequence
    cell, params, batch = case(GRUConfig(**fields), mask)
    got = cell.gradient(params, batch)
    want = {k: np.zeros_like(v) for k, v in params.items()}
    for b in range(mask.shape[1]):
        keep = np.flatnonzero(mask[:, b])
        if keep.size == 0:
            continue
        for k, v in cell.gradient(params, sequence(batch, b, keep)).items():
            want[k] += v / mask.shape[1]
    if fields["readout"] == "mean":
        # the all-masked sequence still has a loss term: CE of the zero pooled state
        lone = Batch(batch.x[:1, 2:3], batch.y[2:3], np.zeros((1, 1)))
        for k, v in cell.gradient(params, lone).items():
            want[k] += v / mask.shape[1]
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("fields", VARIANTS[:4], ids=str)
def test_masked_inputs_have_exactly_no_effect(fields):
    mask = make_mask("random", np.random.default_rng(4), 6, 3)
    mask[:, 1] = 0
    cell, params, batch = case(GRUConfig(**fields), mask)
    other = batch.copy()
    rng = np.random.default_rng(9)
    hidden = mask == 0
    if fields["embedding"]:
        other.x[hidden] = rng.integers(0, cell.config.vocab, size=hidden.sum())
    else:
        other.x[hidden] = rng.normal(size=(hidden.sum(), cell.config.input_size))
    if fields["readout"] == "lm":
        other.y[hidden] = rng.integers(0, cell.config.classes, size=hidden.sum())
    a, b = cell.gradient(params, batch), cell.gradient(params, other)
    for k in params:
        assert np.array_equal(a[k], b[k]), k        # bit for bit, not approximately
    assert cell.loss(params, batch) == cell.loss(params, other)


def test_batch_of_one_passes_and_a_fully_masked_batch_is_refused():
    cell, params, batch = case(GRUConfig(layers=2), np.ones((4, 1)))
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert result.passed, result.summary()
    # all masked: nothing reaches any parameter, exactly, so no check could fail
    cell, params, batch = case(GRUConfig(layers=2), np.zeros((4, 2)))
    grads = cell.gradient(params, batch)
    assert not any(np.any(g) for g in grads.values())
    with pytest.raises(CheckCannotFail, match="exactly zero in every oracle"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


def test_ignoring_the_mask_in_backward_is_caught():
    config = GRUConfig(layers=2)
    cell = MaskIgnoredInBackwardGRU(config)
    rng = np.random.default_rng(1)
    params = cell.init_params(rng)
    mask = make_mask("random", rng, 6, 3)
    mask[2, 0], mask[3, 0] = 0, 1       # a hole followed by a kept step
    batch = cell.sample_batch(rng, 6, 3, mask)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert not result.passed
    assert {"U0", "U1"} <= {c.parameter for c in result.comparisons if not c.passed}


def test_ignoring_the_mask_is_harmless_with_pure_right_padding():
    # after the last kept step nothing is back-propagated, so the bug cannot change the
    # gradient: the check is right to pass, and the gradient really is the true one
    config = GRUConfig(layers=2)
    rng = np.random.default_rng(1)
    broken, good = MaskIgnoredInBackwardGRU(config), GRU(config)
    params = good.init_params(rng)
    batch = good.sample_batch(rng, 6, 3, mask_from_lengths(np.array([2, 6, 4]), 6))
    a, b = broken.gradient(params, batch), good.gradient(params, batch)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert check_gradients(broken, params, batch, oracles="analytic,numeric").passed


def test_mask_from_lengths():
    assert mask_from_lengths(np.array([0, 2, 3]), 3).T.tolist() == [
        [0, 0, 0], [1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="lengths"):
        mask_from_lengths(np.array([4]), 3)


@pytest.mark.parametrize("mask, message", [
    (np.ones((3, 2)), r"mask has shape \(3, 2\), expected \(T, B\) = \(4, 2\)"),
    (np.full((4, 2), 0.5), "mask must hold only 0 and 1, found 0.5"),
    (np.full((4, 2), 2.0), "found 2.0"),
])
def test_bad_masks_are_refused(mask, message):
    with pytest.raises(ValueError, match=message):
        validate_mask(mask, 4, 2)
    cell = GRU(GRUConfig())
    with pytest.raises(ValueError, match="mask"):
        cell.sample_batch(np.random.default_rng(0), 4, 2, mask)


def test_unknown_mask_kind():
    with pytest.raises(ValueError, match="mask='some' is not one of none, lengths, random"):
        make_mask("some", np.random.default_rng(0), 3, 2)
