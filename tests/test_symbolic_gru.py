"""SymbolicGRU (scan + automatic differentiation) against the NumPy reference GRU."""

from __future__ import annotations

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
    model = SymbolicGRU(GRUConfig(layers=3), truncate_gradient=4)
    assert model.key not in gru_symbolic._COMPILED
    assert gru_symbolic.compiled_count() == count


def test_truncate_gradient_keeps_only_the_last_steps():
    """scan's truncate_gradient=k backpropagates through the last k steps of the sequence only.

    It is not k-step sliding-window truncation: the loss and the readout
    gradient are unchanged, the inputs of the last k steps get their full
    gradient, and no gradient at all reaches the inputs of earlier steps, not
    even from their own loss terms.
    """
    config = GRUConfig(embedding=True)
    ref = GRU(config)
    rng = np.random.default_rng(11)
    params = ref.init_params(rng)
    steps, k = 6, 2
    ids = np.repeat(np.arange(steps)[:, None], 2, axis=1)    # token t at step t
    batch = Batch(ids, rng.integers(0, config.classes, size=(steps, 2)), np.ones((steps, 2)))
    loss, grads = SymbolicGRU(config, truncate_gradient=k).loss_and_gradient(params, batch)
    full = ref.gradient(params, batch)
    assert loss == pytest.approx(ref.loss(params, batch), rel=1e-12)
    for name in ("V", "c"):
        np.testing.assert_allclose(grads[name], full[name], rtol=1e-9, atol=1e-12)
    assert np.all(grads["E"][:steps - k] == 0)
    # an input's gradient only flows from later steps, so the last k inputs get it all
    np.testing.assert_allclose(grads["E"][steps - k:], full["E"][steps - k:],
                               rtol=1e-9, atol=1e-12)
    assert not np.allclose(grads["U0"], full["U0"])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown backend 'x': choose pytensor or theano"):
        backends.load("x")
    with pytest.raises(ValueError, match="unknown backend"):
        SymbolicGRU(GRUConfig(), backend="x")
    with pytest.raises(ValueError, match="truncate_gradient"):
        SymbolicGRU(GRUConfig(), truncate_gradient=0)
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
