"""The symbolic oracle on the legacy backend: Theano 1.0.5 (``backend="theano"``).

The symbolic GRU and LSTM compiled by Theano must give the NumPy reference's
loss and (truncated) gradients, as they do under PyTensor.  These tests need
Theano 1.0.5, which needs NumPy < 1.24, so they run in the separate
environment that ``.ci/theano-legacy`` builds; where Theano is not installed
(the main environment, on PyTensor and NumPy 2) they are skipped, and only
the tests of the missing-Theano message and of the flag handling run.

``GRADCHECK_REQUIRE_THEANO=1`` (set by ``.ci/theano-legacy``) turns the skip
into failures, so a broken legacy environment cannot pass as skipped tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cells import backend as backends
from cells.gru import GRU, GRUConfig
from cells.gru_symbolic import SymbolicGRU
from cells.lstm import LSTM, LSTMConfig
from cells.lstm_symbolic import SymbolicLSTM

HAVE_THEANO = importlib.util.find_spec("theano") is not None
REQUIRED = os.environ.get("GRADCHECK_REQUIRE_THEANO", "") not in ("", "0")


def _theano_problem() -> str | None:
    """Why the Theano backend cannot be loaded here, or None when it can."""
    if not HAVE_THEANO:
        return ("Theano is not installed: these tests run in the Theano 1.0.5 / "
                "NumPy < 1.24 environment of .ci/theano-legacy")
    try:
        with warnings.catch_warnings():          # Theano's use of NumPy's old aliases
            warnings.simplefilter("ignore", DeprecationWarning)
            backends.load("theano")
    except ImportError as exc:
        return f"Theano 1.0.5 cannot be loaded: {exc}"
    return None


PROBLEM = _theano_problem()
needs_theano = pytest.mark.skipif(PROBLEM is not None and not REQUIRED,
                                  reason=PROBLEM or "")
# Theano 1.0.5 calls np.complex, np.bool and imp, deprecated in NumPy 1.20 and Python
# 3.4: thousands of warnings about Theano itself, none about this project
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:theano")

STEPS, BATCH = 5, 3
TRUNCATIONS = ("full", "tail", "window")


def make_mask(rng, steps, batch):
    """0/1 mask with a hole in sequence 0 and sequence 1 fully masked."""
    mask = (rng.random((steps, batch)) < 0.7).astype(np.float64)
    if steps >= 2:
        mask[0, 0], mask[1, 0] = 1.0, 0.0
        mask[:, 1] = 0.0
    return mask


def make_case(ref, seed, steps=STEPS, batch=BATCH, scale=2.0):
    """Parameters (``init_params`` scaled so hard gates saturate too) and a masked batch."""
    rng = np.random.default_rng(seed)
    params = {k: scale * v for k, v in ref.init_params(rng).items()}
    return params, ref.sample_batch(rng, steps, batch, make_mask(rng, steps, batch))


def truncated(config, kind, k):
    if kind == "full":
        return config
    return dataclasses.replace(config, truncate=k, truncation=kind)


def max_difference(grads, ref_grads):
    assert list(grads) == list(ref_grads)
    return max(float(np.abs(grads[name] - g).max()) for name, g in ref_grads.items())


def assert_matches(model, ref, params, batch, true_loss):
    """Theano's loss is the true loss and its gradient the reference's, to ~1e-12."""
    loss, grads = model.loss_and_gradient(params, batch)
    assert abs(loss - true_loss) <= 1e-12 * abs(true_loss)
    ref_grads = ref.gradient(params, batch)
    for name, g in grads.items():
        assert g.dtype == np.float64 and g.shape == params[name].shape, name
    assert max_difference(grads, ref_grads) < 1e-12
    return grads


# ------------------------------------------------------------------------- GRU
# Six two-level options and the truncation (full, tail 2, window 2) in 7 cases
# such that every pair of values of any two options occurs together in some
# case (a covering array of strength 2; checked by test_gru_cases_cover_every_pair).
GRU_OPTIONS = (("reset", ("before", "after")), ("update", ("old", "new")),
               ("gate", ("sigmoid", "hard")), ("readout", ("lm", "mean")),
               ("embedding", (False, True)), ("layers", (1, 2)),
               ("truncation", TRUNCATIONS))
GRU_ROWS = ((0, 0, 0, 0, 0, 1, 0), (0, 0, 0, 1, 1, 1, 2), (0, 1, 0, 1, 0, 0, 1),
            (0, 1, 1, 0, 0, 1, 2), (1, 0, 0, 0, 0, 0, 2), (1, 0, 1, 0, 1, 1, 1),
            (1, 1, 1, 1, 1, 0, 0))
GRU_CASES = [{name: values[i] for (name, values), i in zip(GRU_OPTIONS, row)}
             for row in GRU_ROWS]


def gru_id(case):
    return "-".join([case["reset"], case["update"], case["gate"], case["readout"],
                     "emb" if case["embedding"] else "dense", f"L{case['layers']}",
                     case["truncation"]])


def test_gru_cases_cover_every_pair():
    for (i, (_, a)), (j, (_, b)) in itertools.combinations(enumerate(GRU_OPTIONS), 2):
        seen = {(row[i], row[j]) for row in GRU_ROWS}
        assert len(seen) == len(a) * len(b), (GRU_OPTIONS[i][0], GRU_OPTIONS[j][0])


@needs_theano
@pytest.mark.parametrize("case", GRU_CASES, ids=[gru_id(c) for c in GRU_CASES])
def test_gru_matches_reference(case):
    fields = dict(case)
    kind = fields.pop("truncation")
    full_config = GRUConfig(**fields)
    seed = GRU_CASES.index(case)
    ref = GRU(full_config)
    params, batch = make_case(ref, seed)
    true_loss, full = ref.loss_and_gradient(params, batch)
    ks = (2,) if kind == "tail" else (1, 2, STEPS + 1) if kind == "window" else (-1,)
    keys = set()
    for k in ks:
        config = truncated(full_config, kind, k)
        model = SymbolicGRU(config, backend="theano")
        assert model.key[-1] == "theano"
        keys.add(model.key)
        grads = assert_matches(model, GRU(config), params, batch, true_loss)
        # the truncation really truncates, and a window past step 0 is full BPTT
        differs = max_difference(grads, full) > 1e-6
        assert differs == (kind != "full" and k < STEPS - 1), k
    assert len(keys) == 1      # window k is an input: one compiled function for every k


@needs_theano
@pytest.mark.parametrize("k", [1, 3, STEPS])
def test_gru_tail_truncation_for_several_k(k):
    full_config = GRUConfig(reset="after", gate="hard", embedding=True, layers=2)
    ref = GRU(full_config)
    params, batch = make_case(ref, seed=20 + k)
    config = truncated(full_config, "tail", k)
    model = SymbolicGRU(config, backend="theano")
    assert model.key[-3:] == ("tail", k, "theano")
    grads = assert_matches(model, GRU(config), params, batch, ref.loss(params, batch))
    assert (max_difference(grads, ref.gradient(params, batch)) > 1e-6) == (k < STEPS)


@needs_theano
def test_gru_short_sequences_and_other_sizes():
    """One compiled function serves any size, T = 1 and T = 0 included."""
    full_config = GRUConfig(reset="after", readout="mean", embedding=True, layers=2)
    for steps, batch, sizes in ((5, 3, {}), (7, 2, dict(input_size=6, hidden_size=3,
                                                        classes=4, vocab=9)), (1, 3, {}),
                                (0, 2, {})):
        config = truncated(dataclasses.replace(full_config, **sizes), "window", 2)
        ref = GRU(config)
        params, data = make_case(ref, seed=30 + steps, steps=steps, batch=batch)
        loss, grads = SymbolicGRU(config, backend="theano").loss_and_gradient(params, data)
        ref_loss, ref_grads = ref.loss_and_gradient(params, data)
        assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-15)
        assert max_difference(grads, ref_grads) < 1e-12


# ------------------------------------------------------------------------ LSTM
# Four two-level options and the truncation in 6 cases, again covering every pair.
LSTM_OPTIONS = (("gate", ("sigmoid", "hard")), ("readout", ("lm", "mean")),
                ("embedding", (False, True)), ("layers", (1, 2)),
                ("truncation", TRUNCATIONS))
LSTM_ROWS = ((0, 0, 0, 0, 1), (0, 1, 0, 1, 2), (0, 1, 1, 0, 0), (1, 0, 0, 1, 0),
             (1, 0, 1, 0, 2), (1, 1, 1, 1, 1))
LSTM_CASES = [{name: values[i] for (name, values), i in zip(LSTM_OPTIONS, row)}
              for row in LSTM_ROWS]


def lstm_id(case):
    return "-".join([case["gate"], case["readout"], "emb" if case["embedding"] else "dense",
                     f"L{case['layers']}", case["truncation"]])


def test_lstm_cases_cover_every_pair():
    for (i, (_, a)), (j, (_, b)) in itertools.combinations(enumerate(LSTM_OPTIONS), 2):
        seen = {(row[i], row[j]) for row in LSTM_ROWS}
        assert len(seen) == len(a) * len(b), (LSTM_OPTIONS[i][0], LSTM_OPTIONS[j][0])


@needs_theano
@pytest.mark.parametrize("case", LSTM_CASES, ids=[lstm_id(c) for c in LSTM_CASES])
def test_lstm_matches_reference(case):
    fields = dict(case)
    kind = fields.pop("truncation")
    full_config = LSTMConfig(**fields)
    ref = LSTM(full_config)
    params, batch = make_case(ref, seed=40 + LSTM_CASES.index(case))
    true_loss, full = ref.loss_and_gradient(params, batch)
    ks = (2,) if kind == "tail" else (1, 2, STEPS + 1) if kind == "window" else (-1,)
    keys = set()
    for k in ks:
        config = truncated(full_config, kind, k)
        model = SymbolicLSTM(config, backend="theano")
        assert model.key[-1] == "theano"
        keys.add(model.key)
        grads = assert_matches(model, LSTM(config), params, batch, true_loss)
        differs = max_difference(grads, full) > 1e-6
        assert differs == (kind != "full" and k < STEPS - 1), k
    assert len(keys) == 1


# --------------------------------------------------------------- the harness
@needs_theano
def test_three_oracles_agree_on_theano():
    from gradcheck import check_gradients

    config = GRUConfig(reset="after", gate="hard", readout="mean", layers=2)
    ref = GRU(config)
    params, batch = make_case(ref, seed=50, scale=1.0)
    result = check_gradients(ref, params, batch,
                             symbolic=SymbolicGRU(config, backend="theano"), seed=50)
    assert result.passed, result.summary()
    assert {o for c in result.comparisons for o in c.oracles} == {"analytic", "numeric",
                                                                  "autodiff"}


@needs_theano
def test_backend_ops_match_numpy():
    from cells.activations import hard_sigmoid, log_softmax

    bk = backends.load("theano")
    assert backends.load("theano") is bk
    assert bk.name == "theano" and bk.version.startswith("1.0.")
    a = bk.tensor.dmatrix("a")
    f = bk.function([a], [bk.hard_sigmoid(a), bk.sigmoid(a), bk.log_softmax(a)])
    x = np.array([[-10.0, -2.5, -2.4, 0.0], [0.3, 2.4, 2.5, 40.0]])
    hs, sg, ls = f(x)
    np.testing.assert_array_equal(hs, hard_sigmoid(x))
    np.testing.assert_allclose(sg, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15)
    np.testing.assert_allclose(ls, log_softmax(x), rtol=1e-15, atol=1e-15)


@needs_theano
def test_user_flags_are_kept_and_the_environment_restored(tmp_path):
    """In a fresh process: the user's THEANO_FLAGS apply, BLAS flags are emptied only
    for the import, and THEANO_FLAGS is left as the user set it."""
    code = ("import os\n"
            "from cells import backend\n"
            "bk = backend.load('theano')\n"
            "import theano\n"
            "print(theano.config.exception_verbosity, repr(theano.config.blas.ldflags),\n"
            "      os.environ['THEANO_FLAGS'])\n")
    root = Path(__file__).resolve().parents[1]
    # keep a compile directory the caller chose (.ci/theano-legacy sets one)
    outer = backends._flag_keys(os.environ.get("THEANO_FLAGS", ""))
    flags = ",".join([f"base_compiledir={outer['base_compiledir']}"] * ("base_compiledir" in outer)
                     + ["exception_verbosity=high"])
    env = dict(os.environ, THEANO_FLAGS=flags,
               THEANORC=str(tmp_path / "none"),
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["high", "''", flags]
    assert "Using NumPy C-API based implementation for BLAS" not in out.stderr


# ------------------------------------------------- without Theano, and flags
@pytest.mark.skipif(HAVE_THEANO, reason="Theano is installed")
def test_load_theano_without_theano_says_what_is_missing():
    with pytest.raises(ImportError, match=r"^backend 'theano' needs Theano 1\.0\.5 installed: "
                                          r".*theano"):
        backends.load("theano")
    # the symbolic cells accept the name and fail only when they compile
    model = SymbolicGRU(GRUConfig(), backend="theano")
    params, batch = make_case(model.reference, seed=0)
    with pytest.raises(ImportError, match="needs Theano 1.0.5"):
        model.loss(params, batch)


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "1.24.0",
                    reason="NumPy < 1.24 here: Theano 1.0.5 can use it")
def test_load_theano_with_too_new_a_numpy_says_so(monkeypatch):
    """Theano 1.0.5 installed beside NumPy >= 1.24 would fail deep inside graph
    building (np.bool); load refuses it up front."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "theano" else real(name, *a))
    with pytest.raises(ImportError, match=r"^backend 'theano' needs Theano 1\.0\.5 installed "
                                          r"with NumPy < 1\.24 .*; found NumPy "
                                          + re.escape(np.__version__) + "$"):
        backends._load_theano()
    assert "theano" not in sys.modules


@pytest.fixture
def no_theanorc(tmp_path, monkeypatch):
    monkeypatch.setenv("THEANORC", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("flags, expected", [
    ("", "blas.ldflags="),
    ("floatX=float64", "floatX=float64,blas.ldflags="),
    ("blas.ldflags=", "blas.ldflags="),
    ("blas.ldflags=-lopenblas,floatX=float64", "blas.ldflags=-lopenblas,floatX=float64"),
    # PyTensor's spelling, which Theano 1.0.5 ignores, is honoured in Theano's
    ("blas__ldflags=-lblas", "blas__ldflags=-lblas,blas.ldflags=-lblas"),
    ("base_compiledir=/x", "base_compiledir=/x,blas.ldflags="),
])
def test_theano_flags_empty_blas_ldflags_unless_set(no_theanorc, flags, expected):
    assert backends._theano_flags(flags) == expected


def test_theano_flags_respect_a_config_file(no_theanorc, monkeypatch):
    rc = no_theanorc / "theanorc"
    rc.write_text("[blas]\nldflags = -lopenblas\n")
    monkeypatch.setenv("THEANORC", str(rc))
    assert backends._theano_flags("floatX=float64") == "floatX=float64"


def test_theano_flags_move_the_compiledir_when_home_is_not_writable(no_theanorc,
                                                                     monkeypatch):
    home = no_theanorc / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    flags = backends._theano_flags("")
    assert flags.startswith("blas.ldflags=,base_compiledir=")
    assert flags.endswith(f"theano-{os.getuid()}")
    assert backends._theano_flags("compiledir=/y") == "compiledir=/y,blas.ldflags="
