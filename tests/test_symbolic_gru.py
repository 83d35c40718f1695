"""SymbolicGRU (scan + automatic differentiation) against the NumPy reference GRU."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging

import numpy as np
import pytest

from cells import backend as backends
from cells import gru_symbolic
from cells.activations import hard_sigmoid, log_softmax
from cells.gru import GRU, GRUConfig
from cells.gru_symbolic import SymbolicGRU
from gradcheck.batch import Batch
from gradcheck.finite_differences import central_differences
from gradcheck.truncation import Truncation, surrogate_loss

VARIANTS = list(itertools.product(("before", "after"), ("sigmoid", "hard"), ("lm", "mean"),
                                  (False, True), (1, 2)))
IDS = [f"{r}-{g}-{o}-{'emb' if e else 'dense'}-L{l}" for r, g, o, e, l in VARIANTS]

STEPS, BATCH = 5, 3


def make_mask(rng, steps, batch, empty=1):
    """Random 0/1 mask with zeros everywhere but always some ones; column ``empty`` all zero."""
    mask = (rng.random((steps, batch)) < 0.7).astype(np.float64)
    mask[0, 0] = 1.0
    mask[-1, 0] = 0.0
    mask[:, empty] = 0.0
    return mask


def make_case(config, seed, steps=STEPS, batch=BATCH, scale=2.0):
    """Reference model, parameters and batch.

    Parameters are scaled up from ``init_params`` so that hard gates also
    saturate (pre-activations beyond +-2.5) on some elements.
    """
    rng = np.random.default_rng(seed)
    ref = GRU(config)
    params = {k: scale * v for k, v in ref.init_params(rng).items()}
    batch_ = ref.sample_batch(rng, steps, batch, make_mask(rng, steps, batch))
    return ref, params, batch_


def variant_config(reset, gate, readout, embedding, layers, **sizes):
    return GRUConfig(reset=reset, gate=gate, readout=readout, embedding=embedding,
                     layers=layers, **sizes)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_loss_and_gradient_match_reference(variant):
    config = variant_config(*variant)
    ref, params, batch = make_case(config, seed=VARIANTS.index(variant))
    loss, grads = SymbolicGRU(config).loss_and_gradient(params, batch)

    ref_loss = ref.loss(params, batch)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)

    ref_grads = ref.gradient(params, batch)
    assert list(grads) == [s.name for s in ref.param_specs()]
    for name, g in ref_grads.items():
        assert grads[name].dtype == np.float64
        assert grads[name].shape == params[name].shape
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_directional_derivative(variant):
    """Central differences of the symbolic loss along random directions (reuses the compiled function)."""
    config = variant_config(*variant)
    _, params, batch = make_case(config, seed=100 + VARIANTS.index(variant))
    model = SymbolicGRU(config)
    grads = model.gradient(params, batch)
    rng = np.random.default_rng(200 + VARIANTS.index(variant))
    eps = 1e-6
    for _ in range(2):
        direction = {k: rng.normal(size=v.shape) for k, v in params.items()}
        plus = model.loss({k: v + eps * direction[k] for k, v in params.items()}, batch)
        minus = model.loss({k: v - eps * direction[k] for k, v in params.items()}, batch)
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float((grads[k] * direction[k]).sum()) for k in params)
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-8)


def test_masking_and_saturation_are_exercised():
    """The test cases really hold a fully masked sequence and saturated hard gates."""
    config = variant_config("before", "hard", "lm", False, 2)
    ref, params, batch = make_case(config, seed=VARIANTS.index(("before", "hard", "lm", False, 2)))
    assert np.all(batch.mask[:, 1] == 0) and 0 < batch.mask.sum() < batch.mask.size
    _, cache = ref.forward(params, batch)
    # step caches hold (a_rz, gates, n, q, mask): a_rz are the gate pre-activations
    a = np.concatenate([step[0].ravel() for lc in cache["layers"] for step in lc["steps"]])
    assert np.any(np.abs(a) > 2.5) and np.any(np.abs(a) < 2.5)


def test_param_specs_match_reference():
    for variant in VARIANTS:
        config = variant_config(*variant)
        assert SymbolicGRU(config).param_specs() == GRU(config).param_specs()


def test_one_compiled_function_per_structure_any_size():
    variant = ("after", "sigmoid", "mean", True, 2)
    small = variant_config(*variant)
    large = variant_config(*variant, input_size=6, hidden_size=3, classes=4, vocab=9)
    ref, params, batch = make_case(small, seed=7)
    SymbolicGRU(small).loss(params, batch)           # compiled here at the latest
    count = gru_symbolic.compiled_count()
    function = gru_symbolic._COMPILED[SymbolicGRU(small).key]

    ref, params, batch = make_case(large, seed=8, steps=7, batch=2)
    model = SymbolicGRU(large)
    loss, grads = model.loss_and_gradient(params, batch)
    assert gru_symbolic.compiled_count() == count
    assert gru_symbolic._COMPILED[model.key] is function
    assert loss == pytest.approx(ref.loss(params, batch), rel=1e-12)
    for name, g in ref.gradient(params, batch).items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_compiles_lazily():
    count = gru_symbolic.compiled_count()
    model = SymbolicGRU(GRUConfig(layers=3, truncate=4, truncation="tail"))
    assert model.key not in gru_symbolic._COMPILED
    assert gru_symbolic.compiled_count() == count


def test_tail_truncation_keeps_only_the_last_steps():
    """tail k (scan's truncate_gradient=k) backpropagates through the last k steps only.

    It is not k-step sliding-window truncation: the loss and the readout
    gradient are unchanged, the inputs of the last k steps get their full
    gradient, and no gradient at all reaches the inputs of earlier steps, not
    even from their own loss terms.
    """
    steps, k = 6, 2
    config = GRUConfig(embedding=True)
    ref = GRU(config)
    rng = np.random.default_rng(11)
    params = ref.init_params(rng)
    ids = np.repeat(np.arange(steps)[:, None], 2, axis=1)    # token t at step t
    batch = Batch(ids, rng.integers(0, config.classes, size=(steps, 2)), np.ones((steps, 2)))
    tail = dataclasses.replace(config, truncate=k, truncation="tail")
    loss, grads = SymbolicGRU(tail).loss_and_gradient(params, batch)
    full = ref.gradient(params, batch)
    assert loss == pytest.approx(ref.loss(params, batch), rel=1e-12)
    for name in ("V", "c"):
        np.testing.assert_allclose(grads[name], full[name], rtol=1e-9, atol=1e-12)
    assert np.all(grads["E"][:steps - k] == 0)
    # an input's gradient only flows from later steps, so the last k inputs get it all
    np.testing.assert_allclose(grads["E"][steps - k:], full["E"][steps - k:],
                               rtol=1e-9, atol=1e-12)
    assert not np.allclose(grads["U0"], full["U0"])


# ------------------------------------------------------------ truncated BPTT
WINDOW_KS = (1, 2, 3, STEPS - 1, STEPS + 3)      # the last two are full BPTT

# Truncated graphs compile slowly (window: about 2.5 s each), so the truncation
# tests run on 8 of the 32 variants: a two-level orthogonal array (columns a, b, c,
# a^b, a^c of a 2^3 factorial) in which every
# pair of options (reset x gate, gate x layers, ...) occurs together exactly twice.
PAIRWISE = [(("before", "after")[a], ("sigmoid", "hard")[b], ("lm", "mean")[c],
             bool(a ^ b), (1, 2)[a ^ c])
            for a in (0, 1) for b in (0, 1) for c in (0, 1)]
PAIRWISE_IDS = [IDS[VARIANTS.index(v)] for v in PAIRWISE]


def truncated(config, kind, k):
    return dataclasses.replace(config, truncate=k, truncation=kind)


def max_difference(grads, ref_grads):
    return max(float(np.abs(grads[name] - g).max()) for name, g in ref_grads.items())


@pytest.mark.parametrize("variant", PAIRWISE, ids=PAIRWISE_IDS)
def test_window_truncation_matches_reference(variant):
    """One compiled function (k is an input) gives NumPy's window-k gradient for every k."""
    config = variant_config(*variant)
    ref, params, batch = make_case(config, seed=300 + VARIANTS.index(variant))
    assert np.all(batch.mask[:, 1] == 0) and np.any(batch.mask[:, 0] == 0)
    true_loss, full = ref.loss_and_gradient(params, batch)
    keys, counts = set(), set()
    for k in WINDOW_KS:
        cell = truncated(config, "window", k)
        model = SymbolicGRU(cell)
        loss, grads = model.loss_and_gradient(params, batch)
        keys.add(model.key)
        counts.add(gru_symbolic.compiled_count())
        # window truncation changes the gradient, never the loss
        assert abs(loss - true_loss) <= 1e-12 * abs(true_loss)
        ref_grads = GRU(cell).gradient(params, batch)
        assert max_difference(grads, ref_grads) < 1e-12, k
        if k >= STEPS - 1:
            assert max_difference(grads, full) < 1e-12, k
        elif k == 1:
            assert max_difference(grads, full) > 1e-6, k   # the truncation does something
    assert len(keys) == 1 and len(counts) == 1


@pytest.mark.parametrize("variant", PAIRWISE, ids=PAIRWISE_IDS)
def test_tail_truncation_matches_reference(variant):
    config = truncated(variant_config(*variant), "tail", 2)
    ref, params, batch = make_case(config, seed=400 + VARIANTS.index(variant))
    loss, grads = SymbolicGRU(config).loss_and_gradient(params, batch)
    true_loss = GRU(variant_config(*variant)).loss(params, batch)
    assert abs(loss - true_loss) <= 1e-12 * abs(true_loss)
    assert max_difference(grads, ref.gradient(params, batch)) < 1e-12
    window = truncated(config, "window", 2)
    assert max_difference(grads, GRU(window).gradient(params, batch)) > 1e-6


@pytest.mark.parametrize("variant", [("after", "hard", "lm", True, 2),
                                     ("before", "sigmoid", "mean", False, 2)],
                         ids=["after-hard-lm-emb-L2", "before-sigmoid-mean-dense-L2"])
@pytest.mark.parametrize("k", [1, 3, STEPS])
def test_tail_truncation_matches_reference_for_several_k(variant, k):
    config = variant_config(*variant)
    ref, params, batch = make_case(config, seed=500 + k)
    tail = truncated(config, "tail", k)
    model = SymbolicGRU(tail)
    loss, grads = model.loss_and_gradient(params, batch)
    assert model.key[-3:] == ("tail", k, "pytensor")
    assert abs(loss - ref.loss(params, batch)) <= 1e-12 * abs(ref.loss(params, batch))
    assert max_difference(grads, GRU(tail).gradient(params, batch)) < 1e-12
    full = ref.gradient(params, batch)
    if k >= STEPS:
        assert max_difference(grads, full) < 1e-12
    else:
        assert max_difference(grads, full) > 1e-6


@pytest.mark.parametrize("kind", ["window", "tail"])
def test_truncated_gradient_is_the_surrogate_gradient(kind):
    """Independently of the hand BPTT: central differences of the truncation surrogate."""
    config = truncated(variant_config("after", "sigmoid", "lm", True, 2), kind, 2)
    ref, params, batch = make_case(config, seed=600, scale=1.0)
    grads = SymbolicGRU(config).gradient(params, batch)
    numeric = central_differences(surrogate_loss(ref, params, batch, Truncation(kind, 2)), params)
    for name, g in numeric.items():
        np.testing.assert_allclose(grads[name], g.value, rtol=1e-6, atol=1e-8, err_msg=name)


def test_window_longer_than_the_sequence_and_short_sequences():
    """k is clamped to T - 1 per call; T = 1 and T = 0 work too."""
    config = variant_config("before", "hard", "lm", False, 2)
    ref = GRU(config)
    rng = np.random.default_rng(700)
    params = ref.init_params(rng)
    for steps in (1, 0):
        batch = ref.sample_batch(rng, steps, 3, np.ones((steps, 3)))
        for k in (1, 7):
            cell = truncated(config, "window", k)
            loss, grads = SymbolicGRU(cell).loss_and_gradient(params, batch)
            ref_loss, ref_grads = GRU(cell).loss_and_gradient(params, batch)
            assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-15)
            assert max_difference(grads, ref_grads) < 1e-12


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown backend 'x': choose pytensor or theano"):
        backends.load("x")
    with pytest.raises(ValueError, match="unknown backend"):
        SymbolicGRU(GRUConfig(), backend="x")
    # truncation comes from the config alone
    with pytest.raises(TypeError, match="either a config or GRUConfig fields"):
        SymbolicGRU(GRUConfig(), truncate_gradient=3)
    with pytest.raises(TypeError, match="truncate_gradient"):
        SymbolicGRU(truncate_gradient=3)
    with pytest.raises(ValueError, match="truncate=0 must be -1"):
        SymbolicGRU(truncate=0)
    with pytest.raises(ValueError, match="truncation='both' is not one of"):
        SymbolicGRU(truncate=2, truncation="both")
    model = SymbolicGRU(GRUConfig())
    ref, params, batch = make_case(GRUConfig(), seed=0)
    del params["U0"]
    with pytest.raises(ValueError, match="missing U0"):
        model.loss(params, batch)


@pytest.mark.skipif(importlib.util.find_spec("theano") is not None, reason="Theano is installed")
def test_theano_backend_needs_theano():
    with pytest.raises(ImportError, match="backend 'theano' needs Theano 1.0.5 installed: "):
        backends.load("theano")


def test_backend_ops_match_numpy():
    bk = backends.load("pytensor")
    assert backends.load("pytensor") is bk
    assert bk.name == "pytensor" and bk.version
    a = bk.tensor.dmatrix("a")
    f = bk.function([a], [bk.hard_sigmoid(a), bk.sigmoid(a), bk.log_softmax(a)])
    x = np.array([[-10.0, -2.5, -2.4, 0.0], [0.3, 2.4, 2.5, 40.0]])
    hs, sg, ls = f(x)
    np.testing.assert_array_equal(hs, hard_sigmoid(x))
    np.testing.assert_allclose(sg, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15)
    np.testing.assert_allclose(ls, log_softmax(x), rtol=1e-15, atol=1e-15)


def test_blas_message_silenced_and_nothing_else(caplog):
    backends.load("pytensor")
    logger = logging.getLogger("pytensor.tensor.blas")
    with caplog.at_level(logging.WARNING, logger="pytensor.tensor.blas"):
        logger.warning("Using NumPy C-API based implementation for BLAS functions.")
        logger.warning("some other BLAS warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["some other BLAS warning"]
