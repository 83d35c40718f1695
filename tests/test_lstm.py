"""The reference LSTM: hand BPTT against finite differences and its symbolic twin, in
every variant; truncation, masks, localisation, and broken LSTMs that must fail."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from cells import CELLS, get_cell
from cells import lstm_symbolic
from cells.lstm import LSTM, LSTMConfig
from cells.lstm_symbolic import SymbolicLSTM
from cells.zoo.lstm_bugs import (BROKEN_LSTMS, CellStateWrongIndexLSTM,
                                 ForgetGateMissingDerivativeLSTM, OffByOneWindowLSTM)
from gradcheck import Batch, check_builtin, check_gradients
from gradcheck.truncation import FULL, Truncation, surrogate_loss

VARIANTS = list(itertools.product(("sigmoid", "hard"), ("lm", "mean"), (False, True), (1, 2)))
IDS = [f"{g}-{o}-{'emb' if e else 'dense'}-L{l}" for g, o, e, l in VARIANTS]

STEPS, BATCH = 5, 3


def variant_config(gate, readout, embedding, layers, **fields):
    return LSTMConfig(gate=gate, readout=readout, embedding=embedding, layers=layers, **fields)


def make_mask(rng, steps, batch):
    """Random 0/1 mask with a hole in sequence 0 and sequence 1 fully masked."""
    mask = (rng.random((steps, batch)) < 0.7).astype(np.float64)
    mask[0, 0], mask[1, 0], mask[2, 0] = 1.0, 0.0, 1.0
    mask[:, 1] = 0.0
    return mask


def make_case(config, seed, steps=STEPS, batch=BATCH, scale=1.0, cls=LSTM, mask=True):
    """Cell, parameters (``init_params`` times ``scale``) and a batch with masked steps."""
    rng = np.random.default_rng(seed)
    cell = cls(config)
    params = {k: scale * v for k, v in cell.init_params(rng).items()}
    m = make_mask(rng, steps, batch) if mask else None
    return cell, params, cell.sample_batch(rng, steps, batch, m)


def truncated(config, kind, k):
    return dataclasses.replace(config, truncate=k, truncation=kind)


def max_difference(grads, ref_grads):
    return max(float(np.abs(grads[name] - g).max()) for name, g in ref_grads.items())


# ------------------------------------------------------------ configuration
def test_config_has_the_grus_fields_but_reset():
    fields = list(LSTMConfig.__dataclass_fields__)
    assert fields == ["input_size", "hidden_size", "layers", "classes", "vocab", "gate",
                      "readout", "embedding", "truncate", "truncation"]
    with pytest.raises(TypeError, match="reset"):
        LSTMConfig(reset="before")
    assert LSTM(hidden_size=3).config == LSTMConfig(hidden_size=3)


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_size=0), "hidden_size=0 must be a positive integer"),
    (dict(layers=True), "layers=True must be a positive integer"),
    (dict(gate="relu"), "gate='relu' is not one of sigmoid, hard"),
    (dict(readout="max"), "readout='max' is not one of lm, mean"),
    (dict(truncate=0), "truncate=0 must be -1"),
    (dict(truncate=2, truncation="middle"), "truncation='middle' is not one of window, tail"),
])
def test_bad_config_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        LSTMConfig(**fields)


def test_param_specs_have_four_gate_blocks():
    cell = LSTM(LSTMConfig(input_size=4, hidden_size=5, layers=2, classes=3, vocab=7,
                           embedding=True))
    specs = {s.name: s for s in cell.param_specs()}
    assert list(specs) == ["E", "W0", "U0", "b0", "W1", "U1", "b1", "V", "c"]
    assert specs["W0"].shape == (4, 20) and specs["W1"].shape == (5, 20)
    assert specs["U1"].shape == (5, 20) and specs["b0"].shape == (20,)
    assert specs["V"].shape == (5, 3) and specs["c"].shape == (3,) and specs["E"].shape == (7, 4)
    assert specs["U0"].blocks == ("i", "f", "o", "c") and specs["U0"].block_of((0, 7)) == "f"
    assert specs["b1"].block_of((19,)) == "c" and specs["b1"].layer == 1
    assert specs["V"].blocks is None and specs["E"].layer == -1


def test_registered_as_lstm():
    entry = get_cell("lstm")
    assert CELLS["lstm"] is entry and entry.config_class is LSTMConfig
    assert isinstance(entry.make(LSTMConfig()), LSTM)
    assert isinstance(entry.make_symbolic(LSTMConfig()), SymbolicLSTM)
    assert "long short-term memory" in entry.description


def test_bad_batch_is_refused():
    cell, params, batch = make_case(LSTMConfig(), seed=0)
    batch.x = batch.x[..., :2]
    with pytest.raises(ValueError, match=r"x must be \(T, B, 4\)"):
        cell.check_inputs(params, batch)
    cell, params, batch = make_case(LSTMConfig(), seed=0)
    del params["U0"]
    with pytest.raises(ValueError, match="missing U0"):
        cell.check_inputs(params, batch)


# --------------------------------------------------- hand BPTT, every variant
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_analytic_matches_numeric_in_every_variant(variant):
    cell, params, batch = make_case(variant_config(*variant), seed=VARIANTS.index(variant))
    assert 0 < batch.mask.sum() < batch.mask.size
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=1,
                             localise=False)
    assert result.passed, result.summary()
    # rounding-sized errors, far inside the tolerance
    assert max(c.max_abs_error for c in result.comparisons) < 1e-8


def test_gradient_does_not_mutate_its_inputs():
    cell, params, batch = make_case(variant_config("hard", "mean", True, 2), seed=3)
    before = {k: v.copy() for k, v in params.items()}, batch.copy()
    cell.gradient(params, batch)
    assert all(np.array_equal(params[k], v) for k, v in before[0].items())
    assert np.array_equal(batch.x, before[1].x) and np.array_equal(batch.mask, before[1].mask)


# ------------------------------------------------- symbolic twin, every variant
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_symbolic_matches_numpy_in_every_variant(variant):
    config = variant_config(*variant)
    ref, params, batch = make_case(config, seed=100 + VARIANTS.index(variant), scale=2.0)
    model = SymbolicLSTM(config)
    loss, grads = model.loss_and_gradient(params, batch)
    assert model.key in lstm_symbolic._COMPILED
    ref_loss, ref_grads = ref.loss_and_gradient(params, batch)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert list(grads) == [s.name for s in ref.param_specs()]
    for name, g in ref_grads.items():
        assert grads[name].dtype == np.float64 and grads[name].shape == params[name].shape
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_hard_gates_saturate_in_the_symbolic_cases():
    """The scaled-up parameters put some gate pre-activations beyond the kinks at +-2.5."""
    variant = ("hard", "lm", False, 2)
    ref, params, batch = make_case(variant_config(*variant), seed=100 + VARIANTS.index(variant),
                                   scale=2.0)
    _, cache = ref.forward(params, batch)
    H = ref.config.hidden_size
    # step caches hold (a_ifo, gates, u, tanh c, mask): a_ifo (hard gates) the pre-activations
    a = np.concatenate([s[0][:, :3 * H].ravel() for lc in cache["layers"] for s in lc["steps"]])
    assert np.any(np.abs(a) > 2.5) and np.any(np.abs(a) < 2.5)


def test_one_compiled_function_per_structure_any_size():
    variant = ("sigmoid", "mean", True, 2)
    small = variant_config(*variant)
    large = variant_config(*variant, input_size=6, hidden_size=3, classes=4, vocab=9)
    _, params, batch = make_case(small, seed=7)
    SymbolicLSTM(small).loss(params, batch)          # compiled here at the latest
    count = lstm_symbolic.compiled_count()
    function = lstm_symbolic._COMPILED[SymbolicLSTM(small).key]
    ref, params, batch = make_case(large, seed=8, steps=7, batch=2)
    model = SymbolicLSTM(large)
    loss, grads = model.loss_and_gradient(params, batch)
    assert lstm_symbolic.compiled_count() == count
    assert lstm_symbolic._COMPILED[model.key] is function
    assert loss == pytest.approx(ref.loss(params, batch), rel=1e-12)
    assert max_difference(grads, ref.gradient(params, batch)) < 1e-12


def test_symbolic_invalid_arguments():
    with pytest.raises(ValueError, match="unknown backend"):
        SymbolicLSTM(LSTMConfig(), backend="x")
    with pytest.raises(TypeError, match="either a config or LSTMConfig fields"):
        SymbolicLSTM(LSTMConfig(), layers=2)
    assert SymbolicLSTM(layers=2).param_specs() == LSTM(LSTMConfig(layers=2)).param_specs()


# ------------------------------------------------------------- end to end
def test_check_builtin_passes_all_three_oracle_pairs():
    result = check_builtin("lstm", layers=2, mask="random")
    assert result.oracles == ("analytic", "numeric", "autodiff") and result.forward_ok
    assert result.passed, result.summary()
    assert {c.oracles for c in result.comparisons} == {
        ("analytic", "numeric"), ("analytic", "autodiff"), ("numeric", "autodiff")}
    exact = [c for c in result.comparisons if c.oracles == ("analytic", "autodiff")]
    assert max(c.max_abs_error for c in exact) < 1e-12
    assert result.cell["name"] == "lstm" and "reset" not in result.cell
    assert "check lstm" in result.command and "--reset" not in result.command
    assert result.localisation.sentence() == ("every per-step gate block agrees at every step; "
                                              "dL/d[h|c] agrees at every step")


# ------------------------------------------------------------ truncated BPTT
@pytest.mark.parametrize("kind", ["window", "tail"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("fields", [dict(),
                                    dict(layers=2, embedding=True, readout="mean", gate="hard")],
                         ids=["default", "L2-emb-mean-hard"])
def test_truncated_gradient_matches_its_surrogate_and_differs_from_full(kind, k, fields):
    config = LSTMConfig(truncate=k, truncation=kind, **fields)
    cell, params, batch = make_case(config, seed=20 + k, steps=7)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert result.passed, result.summary()
    assert max(c.max_abs_error for c in result.comparisons) < 1e-8
    full = LSTM(LSTMConfig(**fields)).gradient(params, batch)
    got = cell.gradient(params, batch)
    assert max(np.abs(full[n] - got[n]).max() for n in ("U0", "W0")) > 1e-5
    # the readout's own parameters never see truncation
    np.testing.assert_allclose(got["V"], full["V"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind, k", [("window", 6), ("window", 50), ("tail", 7), ("tail", 50)])
def test_long_enough_truncation_is_full_bptt(kind, k):
    cell, params, batch = make_case(LSTMConfig(layers=2, truncate=k, truncation=kind), seed=4,
                                    steps=7)
    full = LSTM(LSTMConfig(layers=2)).gradient(params, batch)
    assert max_difference(cell.gradient(params, batch), full) < 1e-15


def test_symbolic_window_truncation_matches_numpy_for_every_k():
    """One compiled function (k is an input) gives NumPy's window-k gradient for every k."""
    config = variant_config("hard", "lm", True, 2)
    ref, params, batch = make_case(config, seed=30, scale=2.0)
    true_loss, full = ref.loss_and_gradient(params, batch)
    keys, counts = set(), set()
    for k in (1, 2, STEPS - 1, STEPS + 3):          # the last two are full BPTT
        model = SymbolicLSTM(truncated(config, "window", k))
        loss, grads = model.loss_and_gradient(params, batch)
        keys.add(model.key)
        counts.add(lstm_symbolic.compiled_count())
        assert abs(loss - true_loss) <= 1e-12 * abs(true_loss)
        assert max_difference(grads, LSTM(model.config).gradient(params, batch)) < 1e-12, k
        if k >= STEPS - 1:
            assert max_difference(grads, full) < 1e-12, k
        else:
            assert max_difference(grads, full) > 1e-6, k
    assert len(keys) == 1 and len(counts) == 1


def test_symbolic_tail_truncation_matches_numpy():
    config = truncated(variant_config("sigmoid", "mean", False, 2), "tail", 2)
    ref, params, batch = make_case(config, seed=31, scale=2.0)
    model = SymbolicLSTM(config)
    loss, grads = model.loss_and_gradient(params, batch)
    assert model.key[-3:] == ("tail", 2, "pytensor")
    assert abs(loss - ref.loss(params, batch)) <= 1e-12 * abs(ref.loss(params, batch))
    assert max_difference(grads, ref.gradient(params, batch)) < 1e-12
    window = LSTM(truncated(config, "window", 2))
    assert max_difference(grads, window.gradient(params, batch)) > 1e-6


def test_off_by_one_window_fails_and_says_so():
    cell = OffByOneWindowLSTM(LSTMConfig(truncate=3, truncation="window", layers=2))
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 9, 3)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert not result.passed
    assert "matches window k=2 instead of window k=3" in result.summary()


# -------------------------------------------------------------------- masks
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("truncation", [FULL, Truncation("window", 2), Truncation("tail", 3)],
                         ids=lambda tr: tr.describe().replace(" ", ""))
def test_masked_steps_contribute_exactly_zero(variant, truncation):
    """Changing the inputs (and lm targets) at masked steps changes nothing, bit for bit."""
    config = variant_config(*variant, truncate=truncation.k,
                            truncation=truncation.kind if truncation.kind != "full" else "window")
    cell, params, batch = make_case(config, seed=40 + VARIANTS.index(variant), steps=6)
    hidden = batch.mask == 0
    other = batch.copy()
    rng = np.random.default_rng(9)
    if config.embedding:
        other.x[hidden] = rng.integers(0, config.vocab, size=hidden.sum())
    else:
        other.x[hidden] = rng.normal(size=(hidden.sum(), config.input_size))
    if config.readout == "lm":
        other.y[hidden] = rng.integers(0, config.classes, size=hidden.sum())
    assert not np.array_equal(other.x, batch.x)
    (la, a), (lb, b) = cell.loss_and_gradient(params, batch), cell.loss_and_gradient(params, other)
    assert la == lb
    for name in params:
        assert np.array_equal(a[name], b[name]), name


def sequence(batch, b, keep):
    """Sequence b alone, with only the steps in ``keep``, unmasked."""
    y = batch.y[keep, b][:, None] if batch.y.ndim == 2 else batch.y[b:b + 1]
    return Batch(batch.x[keep, b][:, None], y, np.ones((len(keep), 1)))


@pytest.mark.parametrize("variant", [("sigmoid", "lm", False, 2), ("hard", "mean", True, 2),
                                     ("sigmoid", "mean", False, 1)], ids=str)
def test_masked_steps_are_the_same_as_removed_steps(variant):
    """Both h and c are carried over a masked step, so deleting it changes nothing."""
    mask = np.array([[1, 1, 0, 1],
                     [1, 0, 0, 1],
                     [1, 1, 0, 0],
                     [0, 1, 0, 1],
                     [1, 1, 0, 1]], dtype=float)      # holes, right padding, an all-masked sequence
    config = variant_config(*variant)
    cell = LSTM(config)
    rng = np.random.default_rng(5)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, *mask.shape, mask)
    got = cell.gradient(params, batch)
    want = {k: np.zeros_like(v) for k, v in params.items()}
    B = mask.shape[1]
    for b in range(B):
        keep = np.flatnonzero(mask[:, b])
        if keep.size:
            for k, v in cell.gradient(params, sequence(batch, b, keep)).items():
                want[k] += v / B
    if config.readout == "mean":
        # the all-masked sequence still has a loss term: CE of the zero pooled state
        lone = Batch(batch.x[:1, 2:3], batch.y[2:3], np.zeros((1, 1)))
        for k, v in cell.gradient(params, lone).items():
            want[k] += v / B
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


# ------------------------------------------------ step interface, localisation
def test_step_interface_carries_h_and_c():
    config = variant_config("sigmoid", "lm", True, 2, hidden_size=4)
    cell, params, batch = make_case(config, seed=50)
    state = cell.initial_state(BATCH)
    assert [s.shape for s in state] == [(BATCH, 8), (BATCH, 8)] and not np.any(state[0])
    x = cell.embed(params, batch)
    outs = []
    for t in range(STEPS):
        state = cell.step(params, state, x[t], batch.mask[t])
        outs.append(cell.output(state))
    _, cache = cell.forward(params, batch)
    np.testing.assert_array_equal(np.stack(outs), cache["top"])
    np.testing.assert_array_equal(state[1], cache["layers"][1]["states"][-1])
    assert surrogate_loss(cell, params, batch, FULL)(params) == cell.loss(params, batch)


def test_gradient_details_sum_to_the_gradient_and_adjoints_are_2h_wide():
    config = variant_config("hard", "mean", True, 2)
    cell, params, batch = make_case(config, seed=51)
    details = cell.gradient_details(params, batch)
    grads = cell.gradient(params, batch)
    assert details["loss"] == cell.loss(params, batch)
    for name, steps in details["step_contributions"].items():
        np.testing.assert_allclose(steps.sum(axis=0), grads[name], rtol=1e-12, atol=1e-15)
    assert set(details["step_contributions"]) == set(params) - {"V", "c"}
    H = config.hidden_size
    assert [a.shape for a in details["state_adjoints"]] == [(STEPS, BATCH, 2 * H)] * 2


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("part", ["h", "c"])
def test_state_adjoints_match_perturbing_the_carried_state(layer, part):
    """dL/ds_t against central differences of the loss when s_t = [h_t | c_t] is moved
    after step t (as the localiser does), on h alone and on c alone."""
    config = variant_config("sigmoid", "lm", False, 2)
    cell, params, batch = make_case(config, seed=52)
    H = config.hidden_size
    adjoint = cell.gradient_details(params, batch)["state_adjoints"][layer]
    rng = np.random.default_rng(53)
    cols = slice(0, H) if part == "h" else slice(H, 2 * H)

    def loss(at, delta):
        x = cell.embed(params, batch)
        state, outs = cell.initial_state(BATCH), []
        for t in range(STEPS):
            state = cell.step(params, state, x[t], batch.mask[t])
            if t == at:
                state = list(state)
                state[layer] = state[layer] + delta
            outs.append(cell.output(state))
        return cell.readout_loss(params, np.stack(outs), batch)

    eps = 1e-6
    for t in range(STEPS):
        u = np.zeros((BATCH, 2 * H))
        u[:, cols] = rng.choice([-1.0, 1.0], size=(BATCH, H))
        numeric = (loss(t, eps * u) - loss(t, -eps * u)) / (2 * eps)
        assert float(np.sum(adjoint[t] * u)) == pytest.approx(numeric, rel=1e-6, abs=1e-9), t


@pytest.mark.parametrize("fields", [dict(),
                                    dict(layers=2, gate="hard", readout="mean", embedding=True)],
                         ids=["default", "L2-hard-mean-emb"])
def test_localisation_is_green_on_the_correct_lstm(fields):
    cell, params, batch = make_case(LSTMConfig(**fields), seed=60, steps=6)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=60)
    assert result.passed, result.summary()
    loc = result.localisation
    assert loc.sentence() == ("every per-step gate block agrees at every step; "
                              "dL/d[h|c] agrees at every step")
    assert loc.step_excess.max() < 1e-2 and loc.adjoint_excess.max() < 1e-2
    assert {b for _, b in loc.rows} >= {"i", "f", "o", "c"}


# ------------------------------------------------------------ broken LSTMs
@pytest.mark.parametrize("cls", [ForgetGateMissingDerivativeLSTM, CellStateWrongIndexLSTM],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("layers", [1, 2])
def test_broken_lstm_fails_and_is_localised_to_block_f(cls, layers):
    cell = cls(LSTMConfig(layers=layers))
    _, params, batch = make_case(cell.config, seed=70, steps=6, mask=False)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=70)
    assert result.verdict == "fail"
    failing = {c.parameter: c for c in result.comparisons if not c.passed}
    top = layers - 1
    assert f"U{top}" in failing and failing[f"U{top}"].blocks_failed["f"] > 0
    # the readout's gradient does not pass through the bug
    assert "V" not in failing and "c" not in failing
    assert result.worst_failure().describe_worst() in result.summary()
    # BPTT meets the bug first at the last step, in the top layer's forget gate
    t, layer, rows = result.localisation.entry()
    assert (t, layer) == (5, top) and {block for _, block in rows} == {"f"}
    assert result.localisation.sentence().startswith(
        f"the error enters at t = 5 in layer {top}, block f")


def test_forget_gate_bug_spares_step_zero():
    # c_{-1} = 0 makes the forget gate irrelevant at step 0; the wrong index is not spared
    loc = {}
    for cls in (ForgetGateMissingDerivativeLSTM, CellStateWrongIndexLSTM):
        cell = cls(LSTMConfig())
        _, params, batch = make_case(cell.config, seed=71, steps=6, mask=False)
        loc[cls] = check_gradients(cell, params, batch, oracles="analytic,numeric").localisation
    assert loc[ForgetGateMissingDerivativeLSTM].wrong_steps()[("b0", "f")] == [1, 2, 3, 4, 5]
    assert loc[CellStateWrongIndexLSTM].wrong_steps()[("b0", "f")] == [0, 1, 2, 3, 4, 5]


def test_broken_analytic_is_the_odd_one_out_of_three():
    config = LSTMConfig(layers=2)
    cell = ForgetGateMissingDerivativeLSTM(config)
    _, params, batch = make_case(config, seed=72)
    result = check_gradients(cell, params, batch, symbolic=SymbolicLSTM(config), seed=72,
                             localise=False)
    assert result.odd_one_out() == "analytic"
    assert result.summary().startswith("fail: analytic is the odd one out")
    assert all(c.passed for c in result.comparisons if c.oracles == ("numeric", "autodiff"))


class OwnArraysLSTM(LSTM):
    """An LSTM whose step ignores the arrays it is given and returns new ones."""

    def _layer_step(self, l, params, s, xp_t, m_t, out=None, blocks=None):
        return super()._layer_step(l, params, s, xp_t, m_t)


@pytest.mark.parametrize("fields", [dict(), dict(gate="hard", layers=2, embedding=True)],
                         ids=str)
def test_a_step_that_makes_its_own_arrays_gives_the_same_gradient(fields):
    # the backward pass reads the layer's (T, ...) arrays; a step that did not write into
    # them has its results copied there (masked steps included)
    config = LSTMConfig(**fields)
    ref, params, batch = make_case(config, seed=4)
    assert not np.all(batch.mask == 1.0)
    want = ref.loss_and_gradient(params, batch)
    got = OwnArraysLSTM(config).loss_and_gradient(params, batch)
    assert got[0] == want[0]
    for k in want[1]:
        assert np.array_equal(got[1][k], want[1][k]), k


# ------------------------------------------------------- the LSTM zoo, from the CLI
@pytest.mark.parametrize("bug, entry_blocks, last_step_right", [
    ("forget-gate-derivative", {"f"}, False),
    ("cell-state-wrong-index", {"f"}, False),
    ("cell-tanh-slope", {"i", "f", "c"}, False),
    ("cell-carry-without-forget", {"i", "f", "c"}, True),
])
def test_each_lstm_bug_is_caught_and_localised_to_its_gates(bug, entry_blocks, last_step_right):
    # the CLI's defaults: T = 5, B = 3, seed 0, all three oracles
    r = check_builtin("lstm", bug=bug)
    assert not r.passed and r.odd_one_out() == "analytic", r.summary()
    t, layer, rows = r.localisation.entry()
    assert layer == 0 and {b for _, b in rows} == entry_blocks
    # the carried cell-state adjoint is wrong from T - 2 down, not at the last step
    assert (t == STEPS - 2) == last_step_right and (t == STEPS - 1) != last_step_right


def test_the_lstm_window_bug_needs_a_short_window():
    with pytest.raises(ValueError, match="use window truncation with fewer steps"):
        check_builtin("lstm", bug="off-by-one-window")
    r = check_builtin("lstm", bug="off-by-one-window", steps=6, truncate=2,
                      oracles="analytic,numeric")
    assert not r.passed and any("matches window k=1 instead of window k=2" in n
                                for n in r.notes), r.summary()


def test_every_lstm_bug_changes_the_gradient_and_the_list_names_it():
    config = LSTMConfig(truncate=2, truncation="window")
    ref, params, batch = make_case(config, seed=5, steps=6)
    true = ref.gradient(params, batch)
    for name, cls in BROKEN_LSTMS.items():
        wrong = cls(config).gradient(params, batch)
        assert any(not np.allclose(wrong[k], true[k]) for k in true), name
    assert set(CELLS["lstm"].broken()) == set(BROKEN_LSTMS)
