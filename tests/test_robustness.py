"""Bad inputs, one test per row of the README's table: a clear error, or a correct check."""

import json

import numpy as np
import pytest

from cells.gru import GRU, GRUConfig
from cells.stacked import StackedCell
from cli import EXIT_INTERRUPTED, EXIT_PASS, EXIT_USAGE, main
from gradcheck import Batch, check_gradients, function_cell
from gradcheck.check import CellError, CheckCannotFail


def case(seed=0, steps=4, batch=2, mask=None, **fields):
    cell = GRU(GRUConfig(**fields))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, steps, batch, mask)


def test_parameter_of_the_wrong_shape():
    cell, params, batch = case()
    params["U0"] = params["U0"][:4]
    with pytest.raises(ValueError, match=r"U0 has shape \(4, 15\), expected \(5, 15\)"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


def test_inputs_of_the_wrong_shape():
    cell, params, batch = case()
    batch.x = batch.x[..., :3]
    with pytest.raises(ValueError, match=r"x must be \(T, B, 4\)"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_parameters(bad):
    cell, params, batch = case()
    params["W0"][1, 2] = bad
    with pytest.raises(ValueError, match=r"parameter W0 holds .* at \[1, 2\]"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


def test_nan_in_inputs():
    cell, params, batch = case()
    batch.x[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="batch.x holds NaN or Inf"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


def test_no_time_steps():
    cell, params, _ = case()
    empty = Batch(np.zeros((0, 2, 4)), np.zeros((0, 2), int), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"no time steps \(T = 0\)"):
        check_gradients(cell, params, empty, oracles="analytic,numeric")


def test_all_masked_batch_is_refused_as_a_check_that_cannot_fail():
    cell, params, batch = case(mask=np.zeros((4, 2)))
    with pytest.raises(CheckCannotFail, match="every gradient is exactly zero in every oracle"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


def test_a_loss_that_is_nan_everywhere_is_an_input_error():
    cell, params, batch = case()
    nan_cell = function_cell(loss=lambda p, b: float("nan"), gradient=cell.gradient,
                             params=params)
    with pytest.raises(CellError, match=r"loss\(\) gave nan .*checked where the loss is finite"):
        check_gradients(nan_cell, params, batch, oracles="analytic,numeric")


@pytest.mark.parametrize("atol, rtol", [(1e9, None), (0.9, 0.9)])
def test_a_tolerance_that_lets_zero_pass_everywhere_is_refused(atol, rtol):
    # the analytic gradient here is exactly zero: only the refusal keeps it from passing
    cell, params, batch = case()
    zero = function_cell(loss=cell.loss, params=params,
                         gradient=lambda p, b: {k: np.zeros_like(v) for k, v in p.items()})
    with pytest.raises(CheckCannotFail, match="lets a zero gradient pass on every parameter"):
        check_gradients(zero, params, batch, oracles="analytic,numeric", atol=atol, rtol=rtol)
    assert not check_gradients(zero, params, batch, oracles="analytic,numeric").passed


def test_a_parameter_whose_gradient_is_within_the_tolerance_of_zero_is_named():
    cell, params, batch = case()
    largest = {k: float(np.abs(g).max()) for k, g in cell.gradient(params, batch).items()}
    smallest = min(largest, key=largest.get)
    atol = 1.01 * largest[smallest]
    assert max(largest.values()) > 2 * atol
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", atol=atol, rtol=0)
    note = next(n for n in result.notes if n.startswith("a zero gradient would pass on"))
    assert note.split(":")[0].split(" on ")[1].split(", ") == [smallest]
    assert not any(n.startswith("a zero gradient") for n in check_gradients(
        cell, params, batch, oracles="analytic,numeric", seed=0).notes)


class _GradientInParameterDtype(GRU):
    """The reference GRU returning each gradient in its parameter's dtype, as a cell that
    computes in that dtype does."""

    def loss_and_gradient(self, params, batch):
        loss, grads = super().loss_and_gradient(params, batch)
        return loss, {k: g.astype(np.asarray(params[k]).dtype) for k, g in grads.items()}


@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-3), (np.float16, 1e-2)])
def test_low_precision_parameters(dtype, atol):
    cell, params, batch = case()
    low = {k: v.astype(dtype) for k, v in params.items()}
    # the reference cell computes in float64 and returns float64: float64's tolerance;
    # a cell returning the parameter's dtype: that dtype's
    for checked, want in ((cell, 1e-6), (_GradientInParameterDtype(cell.config), atol)):
        result = check_gradients(checked, low, batch, oracles="analytic,numeric")
        assert result.passed, result.summary()
        doc = result.as_dict()
        assert {c["dtype"] for c in doc["comparisons"]} == {np.dtype(dtype).name}
        assert {c["numeric_dtype"] for c in doc["comparisons"]} == {"float64"}
        assert {c["atol"] for c in doc["comparisons"]} == {want}


def test_float32_parameters_do_not_loosen_a_float64_gradient_s_tolerance():
    # a 1% error in dU0, computed in float64 from float32 parameters: float32's 1e-3
    # tolerance would pass it
    class OnePercentOff(GRU):
        def loss_and_gradient(self, params, batch):
            loss, grads = super().loss_and_gradient(params, batch)
            grads["U0"] = grads["U0"] * 1.01
            return loss, grads

    cell, params, batch = case()
    low = {k: v.astype(np.float32) for k, v in params.items()}
    result = check_gradients(OnePercentOff(cell.config), low, batch, oracles="analytic,numeric")
    assert not result.passed and result.odd_one_out_by_parameter() == {"U0": None}


def test_integer_parameters():
    cell, params, batch = case()
    params["c"] = np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match="c has dtype int64, expected a float dtype"):
        check_gradients(cell, params, batch, oracles="analytic,numeric")


def test_non_contiguous_and_read_only_arrays():
    cell, params, batch = case()
    odd = {}
    for name, value in params.items():
        if value.ndim == 2:
            value = np.asfortranarray(value)              # non-contiguous in C order
        value = value.copy() if value.ndim != 2 else value
        value.setflags(write=False)
        odd[name] = value
    batch.x = batch.x[:, :, ::-1].copy()[:, :, ::-1]      # a negative-stride view
    result = check_gradients(cell, odd, batch, oracles="analytic,numeric")
    assert result.passed, result.summary()


def test_a_loss_that_is_not_a_scalar():
    params = {"W": np.ones((2, 3))}
    batch = Batch(np.ones((4, 1, 2)), np.zeros((4, 1), int), np.ones((4, 1)))
    cell = function_cell(loss=lambda p, b: (b.x @ p["W"]).sum(axis=(0, 1)),
                         gradient=lambda p, b: {"W": np.ones((2, 3))}, params=params)
    with pytest.raises(CellError, match=r"returned float64 of shape \(3,\), not a scalar loss"):
        check_gradients(cell, params, batch)


def test_a_cell_that_raises():
    params = {"W": np.ones((2, 3))}
    batch = Batch(np.ones((4, 1, 2)), np.zeros((4, 1), int), np.ones((4, 1)))

    def gradient(p, b):
        raise KeyError("dLdW")

    cell = function_cell(loss=lambda p, b: float(p["W"].sum()), gradient=gradient, params=params)
    with pytest.raises(CellError, match="the analytic oracle failed: the cell raised KeyError"):
        check_gradients(cell, params, batch)


def test_too_large_for_memory_is_refused(capsys):
    assert main(["check", "gru", "--hidden", "100000"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "more than half this machine's" in err and len(err.strip().splitlines()) == 1


def test_many_parameters_get_a_sampled_numeric_check(capsys):
    code = main(["check", "gru", "--hidden", "128", "--input", "64", "--steps", "3",
                 "--batch", "2", "--oracles", "analytic,numeric", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == EXIT_PASS
    assert max(c["compared_elements"] for c in doc["comparisons"]) == 4096
    assert any("numeric oracle sampled" in n for n in doc["notes"])


def test_a_sampled_check_still_fails_a_wrong_gradient():
    from cells.zoo.gru_bugs import BROKEN_GRUS
    cell = BROKEN_GRUS["reset-gate-derivative"](GRUConfig())
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    result = check_gradients(cell, params, cell.sample_batch(rng, 4, 2),
                             oracles="analytic,numeric", max_elements=5, seed=0)
    assert not result.passed
    assert all(c.compared <= 5 for c in result.comparisons)


def test_ctrl_c_gives_a_partial_result_and_an_intact_report(capsys, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = StackedCell.loss

    def interrupting(self, params, batch):
        calls["n"] += 1
        if calls["n"] > 200:             # well into the numeric oracle (~340 calls)
            raise KeyboardInterrupt
        return original(self, params, batch)

    monkeypatch.setattr(StackedCell, "loss", interrupting)
    report = tmp_path / "partial.html"
    # one probe at a time, so that the patched scalar loss is what the numeric oracle calls
    code = main(["check", "gru", "--html", str(report), "--json", "--numeric", "central"])
    out = capsys.readouterr().out
    assert code == EXIT_INTERRUPTED
    doc = json.loads(out)
    assert doc["verdict"] == "interrupted"
    assert doc["summary"].startswith("interrupted: no mismatch so far; partial result: compared ")
    assert doc["summary"].count("interrupted") == 1
    done = {c["parameter"] for c in doc["comparisons"] if "numeric" in c["oracles"]}
    assert done and done != {"W0", "U0", "b0", "V", "c"}
    html = report.read_text()
    assert html.rstrip().endswith("</html>") and "interrupted" in html


@pytest.mark.parametrize("side", [-1.0, 1.0])
@pytest.mark.parametrize("kink", [-2.5, 2.5])
def test_hard_gates_sitting_on_a_kink_are_no_false_alarm(side, kink):
    # move one update-gate bias so that a pre-activation lies within a quarter step of a
    # kink: the central difference of that bias straddles it
    from conftest import count_correct
    from gradcheck.finite_differences import STEP_SCALE
    cell, params, batch = case(gate="hard", mask=np.ones((4, 2)))
    _, cache = cell.forward(params, batch)
    a_z = cache["layers"][0]["steps"][0][0][0, 5:10]       # step 0, sequence 0, block z
    params["b0"][5 + 2] += kink - a_z[2] + side * 0.25 * STEP_SCALE
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    assert count_correct(result), result.summary()
    # not vacuous: the central difference there is off by far more than the tolerance,
    # and it is the kink detection that keeps it from failing
    b0 = next(c for c in result.comparisons if c.parameter == "b0")
    assert b0.kinks == 1 and b0.max_abs_error > 1e-4


def test_ctrl_c_during_the_threaded_passes_returns_without_waiting_for_them():
    # every pass on a worker thread blocks until released; Ctrl-C (a real SIGINT)
    # arrives meanwhile
    import os
    import signal
    import threading
    import time

    from gradcheck.finite_differences import batched_central_differences

    cell, params, batch = case()
    release, started = threading.Event(), threading.Event()
    original = cell.losses

    def slow_losses(stack, data):
        if threading.current_thread() is not threading.main_thread():
            started.set()
            release.wait(30)
        return original(stack, data)

    cell.losses = slow_losses
    timer = threading.Timer(0.2, lambda: started.wait(30) and os.kill(os.getpid(),
                                                                       signal.SIGINT))
    timer.start()
    begin = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            batched_central_differences(cell, params, batch, chunk=2, workers=2,
                                        processes=False)
        waited = time.perf_counter() - begin
    finally:
        release.set()
        timer.join()
    assert waited < 10, waited          # the blocked passes would hold it 30 s


def test_one_step_says_why_the_recurrent_gradient_is_zero():
    cell, params, batch = case(steps=1)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric")
    note = next(n for n in result.notes if n.startswith("the gradient of U0 is exactly zero"))
    assert "one step only: a recurrent weight multiplies nothing but the zero initial state" in note
    longer = check_gradients(*case(steps=2), oracles="analytic,numeric")
    assert not any("exactly zero" in n for n in longer.notes)


def test_a_float32_cell_s_loss_is_compared_with_its_float64_twin_at_float32_s_precision():
    from gradcheck import ParamSpec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 6))
    params = {"W": (rng.normal(size=(6, 8)) * 0.5).astype(np.float32)}

    class Cell:
        """Forward and backward in the parameters' dtype, float32."""
        def param_specs(self):
            return [ParamSpec("W", (6, 8))]

        def loss(self, p, batch):
            return np.tanh(batch.x.astype(p["W"].dtype) @ p["W"]).sum()

        def gradient(self, p, batch):
            xs = batch.x.astype(p["W"].dtype)
            a = np.tanh(xs @ p["W"])
            return {"W": np.einsum("tbd,tbk->dk", xs, 1 - a ** 2)}

    class Twin(Cell):
        """The same function in float64."""
        def loss(self, p, batch):
            return float(np.tanh(batch.x @ np.asarray(p["W"], np.float64)).sum())

        def gradient(self, p, batch):
            a = np.tanh(batch.x @ np.asarray(p["W"], np.float64))
            return {"W": np.einsum("tbd,tbk->dk", batch.x, 1 - a ** 2)}

    batch = Batch(x, np.zeros((5, 4), int), np.ones((5, 4)))
    result = check_gradients(Cell(), params, batch, symbolic=Twin())
    assert result.forward_ok and result.passed, result.summary()
    # in float64 the same twin must match to 1e-9: a loss off by 1e-7 is a disagreement
    params64 = {"W": params["W"].astype(np.float64)}

    class Off(Twin):
        def loss(self, p, batch):
            return super().loss(p, batch) * (1 + 1e-7)

    assert not check_gradients(Twin(), params64, batch, symbolic=Off()).forward_ok
