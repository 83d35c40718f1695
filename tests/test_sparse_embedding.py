"""Sparse-aware checks of large embeddings (gradcheck.sparse_rows).

An embedding E (V, D) is differentiated numerically on the rows the batch uses
and on a seeded sample of the others; every unused row's analytic (and
autodiff) gradient must be exactly zero, and the loss must be flat along a
random direction over the unused rows.  The broken cells below are test
material: each must fail.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from cells.gru import GRU, GRUConfig
from cells.gru_symbolic import SymbolicGRU
from cells.lstm import LSTM, LSTMConfig
from cells.lstm_symbolic import SymbolicLSTM
from cells.zoo.gru_bugs import BROKEN_GRUS
from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, main
from gradcheck.check import check_gradients
from gradcheck.params import ParamSpec
from gradcheck.sparse_rows import EMBEDDING_SAMPLE, plan_sparse_rows

VOCAB = 2000


# ------------------------------------------------------------ BROKEN test cells
class WrongRowEmbeddingGRU(GRU):
    """BROKEN: the embedding gradient of token id lands in row id + 1."""

    def loss_and_gradient(self, params, batch):
        loss, grads = super().loss_and_gradient(params, batch)
        grads["E"] = np.roll(grads["E"], 1, axis=0)     # the bug: row id -> id + 1
        return loss, grads


LEAK = 1e-9


class LeakyEmbeddingGRU(GRU):
    """BROKEN: the analytic gradient leaks LEAK into the first row the batch does not use."""

    def loss_and_gradient(self, params, batch):
        loss, grads = super().loss_and_gradient(params, batch)
        row = np.setdiff1d(np.arange(self.config.vocab), batch.x)[0]
        grads["E"][row, 1] += LEAK                      # the bug: far below any tolerance
        return loss, grads


class ReadsRowZeroGRU(GRU):
    """BROKEN: the forward pass adds weight * E[0] to every input, whatever the tokens;
    its hand BPTT does not know, so the analytic gradient of row 0 stays 0."""

    weight = 1.0

    def embed(self, params, batch):
        E = params["E"]
        return super().embed(params, batch) + self.weight * E[..., None, 0:1, :]


# ------------------------------------------------------------------- helpers
def draw(cell, seed=0, steps=5, batch=3, avoid_zero=False):
    """Seeded parameters and batch; ``avoid_zero`` keeps token 0 out of the batch."""
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    data = cell.sample_batch(rng, steps, batch)
    if avoid_zero:
        data.x = rng.integers(1, cell.config.vocab, size=data.x.shape)
    return params, data


def gru(vocab=VOCAB, cls=GRU, **config):
    return cls(GRUConfig(embedding=True, vocab=vocab, **config))


def numeric_elements(result, name):
    """How many elements of ``name`` the numeric oracle differentiated."""
    return next(c.compared for c in result.comparisons
                if c.parameter == name and "numeric" in c.oracles)


def row_check(result):
    (check,) = result.sparse_rows
    return check


# ------------------------------------------------------ correct cells pass
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_correct_cells_pass_with_the_numeric_work_of_the_used_rows(kind):
    if kind == "gru":
        config = GRUConfig(embedding=True, vocab=VOCAB, layers=2)
        cell, symbolic = GRU(config), SymbolicGRU(config)
    else:
        config = LSTMConfig(embedding=True, vocab=VOCAB, layers=2)
        cell, symbolic = LSTM(config), SymbolicLSTM(config)
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, symbolic=symbolic, seed=0)
    assert result.passed, result.summary()
    check = row_check(result)
    used = len(np.unique(batch.x))
    D = config.input_size
    assert len(check.used) == used and check.unused == VOCAB - used
    assert len(check.sampled) == EMBEDDING_SAMPLE
    assert not np.isin(check.sampled, batch.x).any()
    # the numeric oracle differentiated the used rows and 8 unused ones, not 2000 rows
    assert numeric_elements(result, "E") == check.numeric_elements == (used + 8) * D
    assert check.numeric_elements < VOCAB * D / 50
    assert check.zero_checked == ("analytic", "autodiff")
    assert check.direction is not None and check.direction.passed
    note = next(n for n in result.notes if n.startswith("E: "))
    assert (f"E: {used} of {VOCAB} rows used by the batch, checked exactly; 8 of "
            f"{VOCAB - used} unused rows sampled numerically (seeded)") in note
    assert f"analytic and autodiff gradients exactly zero on all {VOCAB - used} unused rows" in note


def test_dense_every_row_is_the_old_numeric_work_and_keeps_the_zero_rule():
    cell = gru()
    params, batch = draw(cell)
    sparse = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    dense = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0,
                            embedding_sample=None)
    assert sparse.passed and dense.passed
    assert numeric_elements(dense, "E") == VOCAB * 4
    assert numeric_elements(sparse, "E") < VOCAB * 4 / 50
    check = row_check(dense)
    assert check.direction is None and check.zero_checked == ("analytic",)
    assert f"all {check.unused} unused rows differentiated numerically" in check.note()
    # the other parameters are differentiated as before
    for name in ("W0", "U0", "b0", "V", "c"):
        assert numeric_elements(sparse, name) == numeric_elements(dense, name)


def test_the_sample_is_seeded_by_the_check_seed():
    cell = gru()
    params, batch = draw(cell)

    def rows(seed, sample=EMBEDDING_SAMPLE):
        result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=seed,
                                 embedding_sample=sample, localise=False)
        assert result.passed
        return row_check(result).sampled

    assert np.array_equal(rows(3), rows(3))
    assert not np.array_equal(rows(3), rows(4))
    assert len(rows(3, sample=20)) == 20 and len(rows(3, sample=0)) == 0


def test_every_row_used_needs_no_sample():
    cell = gru(vocab=3)
    params, batch = draw(cell)
    assert len(np.unique(batch.x)) == 3
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    assert result.passed
    check = row_check(result)
    assert check.unused == 0 and check.direction is None
    assert check.note() == "E: 3 of 3 rows used by the batch, checked exactly"


# ------------------------------------------------------ broken cells fail
def test_gradient_scattered_into_the_wrong_row_fails_naming_an_unused_row():
    cell = gru(cls=WrongRowEmbeddingGRU)
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, symbolic=SymbolicGRU(cell.config), seed=0)
    assert not result.passed
    assert result.odd_one_out() == "analytic"
    analytic = next(v for v in row_check(result).violations if v.oracle == "analytic")
    row = analytic.index[0]
    assert row not in batch.x and row - 1 in batch.x     # id + 1
    value = result.gradients["analytic"]["E"][analytic.index]
    assert value != 0 and analytic.value == value
    assert (f"E row {row} is not used by the batch but its analytic gradient is {value:.6g} "
            f"at E[{row}, {analytic.index[1]}]") in result.summary()
    assert not any(v.oracle == "autodiff" for v in row_check(result).violations)


def test_the_blog_embedding_word_bug_fails_on_the_used_rows():
    cell = BROKEN_GRUS["blog-embedding-word"](GRUConfig(embedding=True, vocab=VOCAB))
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    assert not result.passed
    failed = next(c for c in result.comparisons if c.parameter == "E")
    assert failed.failed > 0 and failed.worst_index[0] in batch.x


def test_a_tiny_leak_into_an_unused_row_fails_though_every_tolerance_passes():
    cell = gru(cls=LeakyEmbeddingGRU)
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    assert all(c.passed for c in result.comparisons)    # 1e-9 is within atol = 1e-6
    assert not result.passed
    row = int(np.setdiff1d(np.arange(VOCAB), batch.x)[0])
    (violation,) = row_check(result).violations
    assert violation.index == (row, 1) and violation.value == LEAK
    assert (f"E row {row} is not used by the batch but its analytic gradient is 1e-09 at "
            f"E[{row}, 1] (exactly 0 expected)") in result.defects


def test_a_forward_that_reads_an_unused_row_fails_when_the_sample_holds_it():
    cell = gru(vocab=60, cls=ReadsRowZeroGRU)
    params, batch = draw(cell, avoid_zero=True)
    # a check seed whose row sample (stream [seed, 1]) holds row 0
    seed = next(s for s in range(100) if 0 in plan_sparse_rows(
        cell.param_specs()[0], batch, EMBEDDING_SAMPLE, np.random.default_rng([s, 1])).sampled)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=seed)
    assert 0 in row_check(result).sampled and not result.passed
    numeric = next(v for v in row_check(result).violations if v.oracle == "numeric")
    assert numeric.index[0] == 0 and numeric.reference == ("analytic", 0.0)
    assert "E row 0 is not used by the batch but the loss depends on it: numeric gradient" \
        in result.summary()
    assert any(c.parameter == "E" and not c.passed and c.worst_index[0] == 0
               for c in result.comparisons)


def test_the_direction_over_the_unused_rows_catches_a_row_the_sample_missed():
    cell = gru(vocab=VOCAB, cls=ReadsRowZeroGRU)
    params, batch = draw(cell, avoid_zero=True)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    check = row_check(result)
    assert 0 not in check.sampled
    assert not result.passed and not check.direction.passed
    assert all(c.passed for c in result.comparisons)    # no element differentiated sees it
    assert f"along a random direction over all {check.unused} unused rows" in result.summary()


def test_the_sampling_limitation_a_tiny_dependence_on_an_unsampled_row_goes_unseen():
    """Documented limitation: the direction's tolerance grows with sqrt(unused elements)."""
    cell = gru(vocab=VOCAB, cls=ReadsRowZeroGRU)
    cell.weight = 1e-9
    params, batch = draw(cell, avoid_zero=True)
    assert check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0).passed
    dense = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0,
                            embedding_sample=None, localise=False)
    assert dense.passed       # 1e-9 is below atol element by element as well


# ------------------------------------------------------------ interactions
def test_max_elements_draws_from_the_used_and_sampled_rows():
    cell = gru()
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0,
                             max_elements=20)
    assert result.passed
    check = row_check(result)
    assert numeric_elements(result, "E") == check.numeric_elements == 20 and check.capped
    differentiated = np.flatnonzero(~np.isnan(result.gradients["numeric"]["E"]).all(axis=1))
    assert np.isin(differentiated, np.concatenate([check.used, check.sampled])).all()
    assert "differentiated numerically (max_elements)" in check.note()
    assert any(n.startswith("numeric oracle sampled: at most 20") for n in result.notes)
    broken = gru(cls=WrongRowEmbeddingGRU)
    assert not check_gradients(broken, params, batch, oracles="analytic,numeric", seed=0,
                               max_elements=20).passed


def test_fast_mode_keeps_the_zero_rule_and_the_sparse_fallback():
    cell = gru()
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", mode="fast",
                             seed=0)
    assert result.passed and "E" not in result.gradients.get("numeric", {})
    assert "none differentiated numerically" in row_check(result).note()
    for cls in (WrongRowEmbeddingGRU, LeakyEmbeddingGRU, ReadsRowZeroGRU):
        broken = gru(cls=cls)
        params, batch = draw(broken, avoid_zero=True)
        fast = check_gradients(broken, params, batch, oracles="analytic,numeric", mode="fast",
                               seed=0)
        assert not fast.passed, cls.__name__
    wrong = gru(cls=WrongRowEmbeddingGRU)
    fast = check_gradients(wrong, params, batch, oracles="analytic,numeric", mode="fast", seed=0)
    assert "E" in fast.directional["fallback"]
    assert numeric_elements(fast, "E") == row_check(fast).numeric_elements < VOCAB * 4 / 50


@pytest.mark.parametrize("sample", [0, None])
def test_fast_mode_probes_the_unused_rows_whatever_the_sample(sample):
    # in fast mode a parameter that passes the directional screen is not differentiated
    # element by element, so embedding_sample=None ("all") differentiates no unused row:
    # the direction over them must still run, as it does with a sample of 0
    cell = gru(vocab=60)
    params, batch = draw(cell)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", mode="fast",
                             seed=0, embedding_sample=sample)
    check = row_check(result)
    assert result.passed and "E" not in result.directional["fallback"]
    assert check.direction is not None and check.direction.passed
    assert f"flat along a random direction over all {check.unused} unused rows" in check.note()
    # where the screen sends E to the element-by-element check, "all" differentiates
    # every unused row, and the direction is not needed
    if sample is None:
        broken = gru(vocab=60, cls=WrongRowEmbeddingGRU)
        fast = check_gradients(broken, params, batch, oracles="analytic,numeric", mode="fast",
                               seed=0, embedding_sample=None)
        assert "E" in fast.directional["fallback"] and row_check(fast).direction is None
        assert not fast.passed


@pytest.mark.parametrize("truncation", ["window", "tail"])
def test_truncated_bptt_is_checked_sparsely(truncation):
    cell = gru(vocab=500, truncate=2, truncation=truncation)
    params, batch = draw(cell, steps=6)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    assert result.passed, result.summary()
    assert row_check(result).direction.passed
    broken = gru(vocab=500, truncate=2, truncation=truncation, cls=WrongRowEmbeddingGRU)
    assert not check_gradients(broken, params, batch, oracles="analytic,numeric", seed=0).passed


def test_a_wrong_truncation_is_diagnosed_on_the_same_rows():
    cell = gru(vocab=500, cls=BROKEN_GRUS["off-by-one-window"], truncate=3, layers=2)
    params, batch = draw(cell, steps=9)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    assert not result.passed
    assert any("matches window k=2 instead of window k=3" in n for n in result.notes)
    assert numeric_elements(result, "E") == row_check(result).numeric_elements < 500 * 4 / 10


def test_float32_parameters_must_still_be_exactly_zero_on_unused_rows():
    cell = gru(cls=LeakyEmbeddingGRU)
    params, batch = draw(cell)
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    result = check_gradients(cell, params32, batch, oracles="analytic,numeric", seed=0)
    assert not result.passed and row_check(result).violations[0].oracle == "analytic"
    assert check_gradients(gru(), params32, batch, oracles="analytic,numeric", seed=0).passed


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_embedding_sample_is_validated_up_front(bad):
    cell = gru(vocab=20)
    params, batch = draw(cell)
    with pytest.raises(ValueError, match=r"embedding_sample=.* must be a non-negative integer"):
        check_gradients(cell, params, batch, oracles="analytic,numeric", embedding_sample=bad)


class LookupCell:
    """A correct cell of one's own: L = sum tanh(E[ids] w), its rows indexed by batch.ids."""

    def __init__(self, vocab=30, width=3, indexed_by="ids"):
        self.vocab, self.width, self.indexed_by = vocab, width, indexed_by

    def param_specs(self):
        return [ParamSpec("E", (self.vocab, self.width), rows_indexed_by=self.indexed_by),
                ParamSpec("w", (self.width,))]

    def loss(self, params, batch):
        return float(np.tanh(params["E"][batch.ids] @ params["w"]).sum())

    def gradient(self, params, batch):
        a = params["E"][batch.ids] @ params["w"]                  # (N,)
        da = 1.0 - np.tanh(a) ** 2
        dE = np.zeros_like(params["E"])
        np.add.at(dE, batch.ids, da[:, None] * params["w"])
        return {"E": dE, "w": (da[:, None] * params["E"][batch.ids]).sum(axis=0)}


def lookup_case(ids, **kwargs):
    cell = LookupCell(**kwargs)
    rng = np.random.default_rng(0)
    params = {"E": rng.normal(size=(cell.vocab, cell.width)), "w": rng.normal(size=cell.width)}
    return cell, params, SimpleNamespace(ids=np.asarray(ids))


def test_a_cell_of_ones_own_declares_its_lookup_rows():
    cell, params, batch = lookup_case([3, 4, 4, 9])
    result = check_gradients(cell, params, batch, seed=0)
    assert result.passed
    check = row_check(result)
    assert check.indexed_by == "ids" and list(check.used) == [3, 4, 9]
    assert numeric_elements(result, "E") == (3 + 8) * 3


@pytest.mark.parametrize("ids, kwargs, message", [
    ([3, 30], {}, r"batch.ids holds id 30, outside the rows of E \[0, 30\)"),
    ([-1, 2], {}, r"batch.ids holds id -1, outside the rows of E"),
    ([0.0, 1.0], {}, r"batch.ids indexes the rows of E but holds float64, not integer ids"),
    ([1, 2], {"indexed_by": "tokens"},
     r"the rows of E are indexed by batch.tokens, which the batch does not have"),
])
def test_bad_row_ids_are_refused_before_any_oracle_runs(ids, kwargs, message):
    cell, params, batch = lookup_case(ids, **kwargs)
    with pytest.raises(ValueError, match=message):
        check_gradients(cell, params, batch, seed=0)


@pytest.mark.parametrize("spec", [dict(shape=(4, 2), rows_indexed_by=""),
                                  dict(shape=(), rows_indexed_by="x"),
                                  dict(shape=(4, 2), rows_indexed_by=3)])
def test_param_spec_refuses_a_bad_rows_indexed_by(spec):
    with pytest.raises(ValueError, match="rows_indexed_by"):
        ParamSpec("E", **spec)


# ------------------------------------------------------------ command line
def test_cli_option_json_and_exit_codes(capsys):
    args = ["check", "gru", "--embedding", "--vocab", str(VOCAB), "--oracles",
            "analytic,numeric", "--json"]
    assert main(args + ["--embedding-sample", "5"]) == EXIT_PASS
    doc = json.loads(capsys.readouterr().out)
    (entry,) = doc["sparse_rows"]
    assert entry["parameter"] == "E" and entry["rows"] == VOCAB and entry["passed"]
    assert len(entry["sampled_unused_rows"]) == 5 and entry["violations"] == []
    assert entry["numeric_elements"] == (entry["used_rows"] + 5) * 4
    assert "--embedding-sample 5" in doc["command"]
    assert any(n.startswith("E: ") for n in doc["notes"])

    assert main(args + ["--embedding-sample", "all"]) == EXIT_PASS
    doc = json.loads(capsys.readouterr().out)
    assert doc["sparse_rows"][0]["numeric_elements"] == VOCAB * 4


WRONG_ROW_FILE = """
import numpy as np
from cells.gru import GRU, GRUConfig
from gradcheck import Case

class WrongRowEmbeddingGRU(GRU):
    # BROKEN: the embedding gradient of token id lands in row id + 1
    def loss_and_gradient(self, params, batch):
        loss, grads = super().loss_and_gradient(params, batch)
        grads["E"] = np.roll(grads["E"], 1, axis=0)
        return loss, grads

def make_case(seed, steps, batch):
    cell = WrongRowEmbeddingGRU(GRUConfig(embedding=True, vocab=2000))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return Case(cell, params, cell.sample_batch(rng, steps, batch), seed=seed)
"""


def test_cli_fails_a_broken_cell_with_the_row_in_json_and_table(capsys, tmp_path):
    path = tmp_path / "wrong_row.py"
    path.write_text(WRONG_ROW_FILE)
    args = ["check", f"{path}:make_case"]
    assert main(args + ["--json"]) == EXIT_MISMATCH
    doc = json.loads(capsys.readouterr().out)
    violation = doc["sparse_rows"][0]["violations"][0]
    assert violation["oracle"] == "analytic" and violation["expected"] == 0.0
    assert violation["message"] in doc["defects"]
    assert main(args + ["--html", str(tmp_path / "report.html")]) == EXIT_MISMATCH
    assert (tmp_path / "report.html").stat().st_size > 0
    out = capsys.readouterr().out
    assert f"E row {violation['index'][0]} is not used by the batch but its analytic gradient" \
        in out


@pytest.mark.parametrize("value, message", [
    ("-1", "-1 must be 0 or more, or 'all'"), ("x", "'x' is not an integer or 'all'")])
def test_cli_bad_embedding_sample_exits_2_with_one_line(capsys, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["check", "gru", "--embedding", "--embedding-sample", value])
    assert exit_.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_help_documents_the_option(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--embedding-sample N|all" in out and "(default 8)" in out
