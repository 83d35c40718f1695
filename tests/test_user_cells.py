"""Bringing your own cell: the blog-style model adapter, make_case files, and bad files."""

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, main
from gradcheck import Batch, Case, check_gradients, function_cell, model_cell

ROOT = Path(__file__).resolve().parents[1]
BLOG = ROOT / "examples" / "blog_gru.py"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_blog_style_model_class_passes(capsys):
    code, out, err = run(capsys, "check", f"{BLOG}:BlogGRU", "--steps", "6", "--json")
    assert code == EXIT_PASS, err
    doc = json.loads(out)
    assert doc["verdict"] == "pass" and doc["cell"]["kind"] == "model class"
    assert {c["parameter"] for c in doc["comparisons"]} == {"E", "U", "V", "W", "b", "c"}
    # the blocks the model declares name the worst elements
    assert {c["worst_block"] for c in doc["comparisons"] if c["parameter"] == "U"} <= {"z", "r", "h"}


def user_file(tmp_path, body, name="cell_file.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_a_wrong_model_gradient_fails_and_is_named(capsys, tmp_path):
    path = user_file(tmp_path, f'''
        import sys
        sys.path.insert(0, {str(BLOG.parent)!r})
        import numpy as np
        import blog_gru

        class Wrong(blog_gru.BlogGRU):
            def bptt(self, x, y):
                true = blog_gru.BlogGRU.bptt(self, x, y)
                return [g * 1.0 for g in true[:-1]] + [true[-1] * 2.0]   # dL/dc doubled
        ''')
    code, out, _ = run(capsys, "check", f"{path}:Wrong")
    assert code == EXIT_MISMATCH
    assert "mismatch on c" in out and "c[" in out


def test_make_case_with_function_cell(capsys, tmp_path):
    path = user_file(tmp_path, '''
        import numpy as np
        from gradcheck import Batch, Case, function_cell

        def loss(p, batch):                 # L = sum(tanh(x W)) over the sequence
            return float(np.tanh(batch.x @ p["W"]).sum())

        def gradient(p, batch):
            a = np.tanh(batch.x @ p["W"])
            return {"W": np.einsum("tbd,tbk->dk", batch.x, 1 - a ** 2)}

        def make_case(seed, steps):
            rng = np.random.default_rng(seed)
            params = {"W": rng.normal(size=(3, 6))}
            batch = Batch(rng.normal(size=(steps, 2, 3)), np.zeros((steps, 2), int), np.ones((steps, 2)))
            cell = function_cell(loss=loss, gradient=gradient, params=params,
                                 blocks={"W": (("a", "b"), 1)}, name="tanh-layer")
            return Case(cell, params, batch, seed=seed, info={"name": "tanh-layer"})
        ''')
    code, out, err = run(capsys, "check", f"{path}:make_case", "--steps", "4", "--seed", "3")
    assert code == EXIT_PASS, err
    assert "cell tanh-layer" in out and "seed=3" in out


BAD = [
    ("missing.py:X", None, "no such file"),
    ("{f}:Model", "def broken(:\n", "syntax error"),
    ("{f}:Nope", "x = 1\n", "defines no 'Nope'"),
    ("{f}:x", "x = 1\n", "x is a int"),
    ("{f}:Model", "raise RuntimeError('boom')\n", "importing * raised RuntimeError: boom"),
    ("{f}:Model", "class Model:\n    pass\n", "without forward_propagation and bptt"),
    ("{f}:Model", "class Model:\n    def forward_propagation(self, x):\n        pass\n",
     "Model has forward_propagation but no bptt method: *"),
    ("{f}:model", "class Model:\n    def bptt(self, x, y):\n        pass\nmodel = Model()\n",
     "model has bptt but no forward_propagation method: *"),
    ("{f}:make", "def make():\n    return 1\n", "must take a seed argument"),
    ("{f}:make", "def make(seed):\n    return 1\n", "returned int, not gradcheck.Case"),
]


@pytest.mark.parametrize("target, body, message", BAD)
def test_bad_files_exit_2_with_one_line(capsys, tmp_path, target, body, message):
    f = tmp_path / "user.py"
    if body is not None:
        f.write_text(body)
    code, out, err = run(capsys, "check", target.format(f=f))
    assert code == EXIT_USAGE and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    import fnmatch
    assert fnmatch.fnmatch(err, f"*{message}*"), err


MODEL = '''
import sys
sys.path.insert(0, {blog!r})
import numpy as np
import blog_gru

class Model(blog_gru.BlogGRU):
    def bptt(self, x, y):
        grads = blog_gru.BlogGRU.bptt(self, x, y)
        {change}
        return grads
'''


@pytest.mark.parametrize("change, message", [
    ("grads = grads[:-1]", "bptt returned 5 arrays for the 6 parameters E, U, V, W, b, c"),
    ("grads[1] = grads[1][0]", "analytic gradient: U has shape (3, 4, 4), expected (2, 3, 4, 4)"),
    ("grads[2] = grads[2].astype(int)", "analytic gradient: V has dtype int64, expected a float"),
    ("1 / 0", "the analytic oracle failed: the cell raised ZeroDivisionError"),
    ("grads = dict(zip('EUVWbc', grads))",
     "Model.bptt(x, y) must return a list of the gradients of E, U, V, W, b, c, in that order"),
    ("grads = dict(zip('EUVWbc', grads))", "it returned a dict with keys 'E', 'U', 'V'"),
    ("grads[2] = grads[2].astype(np.float32)",
     "Model.bptt(x, y) returned the gradient of V as float32, but parameter V is float64"),
])
def test_bad_gradients_exit_2(capsys, tmp_path, change, message):
    path = user_file(tmp_path, MODEL.format(blog=str(BLOG.parent), change=change))
    code, out, err = run(capsys, "check", f"{path}:Model")
    assert code == EXIT_USAGE, out + err
    assert message in err and len(err.strip().splitlines()) == 1


def test_constructor_arguments_and_truncation_are_explained(capsys, tmp_path):
    path = user_file(tmp_path, MODEL.format(blog=str(BLOG.parent), change="pass").replace(
        "class Model(blog_gru.BlogGRU):",
        "class Model(blog_gru.BlogGRU):\n    def __init__(self, h):\n        super().__init__(hidden_dim=h)\n"))
    code, _, err = run(capsys, "check", f"{path}:Model")
    assert code == EXIT_USAGE and "define a module-level instance" in err
    path = user_file(tmp_path, f'''
        import sys
        sys.path.insert(0, {str(BLOG.parent)!r})
        import blog_gru
        model = blog_gru.BlogGRU(bptt_truncate=2)
        ''', name="trunc.py")
    code, _, err = run(capsys, "check", f"{path}:model", "--steps", "6")
    assert code == EXIT_USAGE and "bptt_truncate = 2 truncates BPTT" in err
    code, out, err = run(capsys, "check", f"{path}:model", "--steps", "3")
    assert code == EXIT_PASS, err


def test_config_options_do_not_apply_to_files(capsys):
    code, _, err = run(capsys, "check", f"{BLOG}:BlogGRU", "--hidden", "8")
    assert code == EXIT_USAGE and "--hidden applies to built-in cells only" in err


def test_python_api_function_cell_catches_a_wrong_gradient():
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 4))}
    batch = Batch(rng.normal(size=(5, 2, 3)), np.zeros((5, 2), int), np.ones((5, 2)))
    loss = lambda p, b: float((np.tanh(b.x @ p["W"]) ** 2).sum())
    wrong = lambda p, b: {"W": np.einsum("tbd,tbk->dk", b.x, 1 - np.tanh(b.x @ p["W"]) ** 2)}
    result = check_gradients(function_cell(loss=loss, gradient=wrong, params=params), params, batch)
    assert not result.passed and "W[" in result.summary()


def test_a_weighing_mask_is_refused_for_a_cell_that_does_not_check_it():
    # a function cell has no check_inputs: the harness itself refuses a mask of values
    # other than 0 and 1 (a 0.5 mask passed before); its shape stays the cell's to judge
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 4))}
    loss = lambda p, b: float((b.mask.reshape(5, 2, 1) * np.tanh(b.x @ p["W"])).sum())
    right = lambda p, b: {"W": np.einsum("tbd,tbk->dk", b.x, b.mask.reshape(5, 2, 1)
                                         * (1 - np.tanh(b.x @ p["W"]) ** 2))}
    cell = function_cell(loss=loss, gradient=right, params=params)
    x = rng.normal(size=(5, 2, 3))
    for mask in (np.full((5, 2), 0.5), np.full((5, 2, 1), 0.5)):
        with pytest.raises(ValueError, match=re.escape("mask must hold only 0 and 1, found 0.5")):
            check_gradients(cell, params, Batch(x, np.zeros((5, 2), int), mask))
    # a (T, B, 1) mask of 0 and 1, which this cell reads, is its business
    mask = np.ones((5, 2, 1))
    mask[3:, 1] = 0
    assert check_gradients(cell, params, Batch(x, np.zeros((5, 2), int), mask)).passed


def test_model_cell_restores_the_models_own_arrays():
    import sys
    sys.path.insert(0, str(BLOG.parent))
    import blog_gru
    model = blog_gru.BlogGRU()
    before = model.U.copy()
    case = model_cell(model, steps=3, seed=0)
    check_gradients(case.cell, case.params, case.batch)
    assert model.U is not None and np.array_equal(model.U, before)
    assert isinstance(case, Case)


# --- user code that exits, prints, or returns the wrong kind of thing -------------------

TANH_CELL = '''
import sys
import numpy as np
from gradcheck import Batch, Case, function_cell

def loss(p, batch):
    {loss_line}
    return float(np.tanh(batch.x @ p["W"]).sum())

def gradient(p, batch):
    {gradient_line}
    a = np.tanh(batch.x @ p["W"])
    return {{"W": np.einsum("tbd,tbk->dk", batch.x, 1 - a ** 2)}}

def make_case(seed):
    {make_case_line}
    rng = np.random.default_rng(seed)
    params = {{"W": rng.normal(size=(3, 6))}}
    batch = Batch(rng.normal(size=(4, 2, 3)), np.zeros((4, 2), int), np.ones((4, 2)))
    return Case(function_cell(loss=loss, gradient=gradient, params=params), params, batch,
                seed=seed)
'''


def tanh_cell(tmp_path, loss_line="pass", gradient_line="pass", make_case_line="pass",
              name="my_cell.py"):
    """A make_case file around a correct tanh layer, one line of each function replaced."""
    return user_file(tmp_path, TANH_CELL.format(loss_line=loss_line, gradient_line=gradient_line,
                                                make_case_line=make_case_line), name=name)


OWN_CELL = '''
import numpy as np
from gradcheck import Batch, Case, ParamSpec

class OwnCell:
    def param_specs(self):
        return [ParamSpec("W", (3, 6))]

    def loss(self, p, batch):
        return float(np.tanh(batch.x @ p["W"]).sum())

    def gradient(self, p, batch):
        raise SystemExit("done")

def make_case(seed):
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(3, 6))}
    batch = Batch(rng.normal(size=(4, 2, 3)), np.zeros((4, 2), int), np.ones((4, 2)))
    return Case(OwnCell(), params, batch, seed=seed)
'''

EXITS = [      # (file body or a tanh_cell line, target, what the last stderr line says)
    ("import sys\nsys.exit(0)\n", "X",
     ["importing ", "my_cell.py raised SystemExit(0) at my_cell.py:2", '__name__ == "__main__"']),
    ("import sys\nsys.exit(3)\n", "X", ["my_cell.py raised SystemExit(3) at my_cell.py:2"]),
    ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', required=True)\n"
     "args = p.parse_args()\n", "X",
     ["my_cell.py raised SystemExit(2) at my_cell.py:4 in argparse", '__name__ == "__main__"']),
    ("class Stop(BaseException):\n    pass\nraise Stop('here')\n", "X",
     ["raised Stop('here') at my_cell.py:3", "Stop derives from BaseException, not Exception"]),
    ({"make_case_line": "raise SystemExit(0)"}, "make_case",
     ["make_case(...) raised SystemExit(0) at my_cell.py:16", "instead of exiting"]),
    ({"gradient_line": "sys.exit(0)"}, "make_case",
     ["gradient() raised SystemExit(0) at my_cell.py:11", "instead of exiting"]),
    ({"loss_line": "sys.exit()"}, "make_case", ["loss() raised SystemExit() at my_cell.py:7"]),
    (OWN_CELL, "make_case", ["OwnCell.gradient() raised SystemExit('done') at my_cell.py:13"]),
    (MODEL.format(blog=str(BLOG.parent), change="raise SystemExit(0)"), "Model",
     ["Model.bptt() raised SystemExit(0) at my_cell.py:10"]),
    (MODEL.format(blog=str(BLOG.parent), change="pass") + "    def forward_propagation(self, x):\n"
     "        sys.exit(0)\n", "Model",
     ["Model.calculate_total_loss() raised SystemExit(0) at my_cell.py:13"]),
    (MODEL.format(blog=str(BLOG.parent), change="pass") + "    def __init__(self):\n"
     "        sys.exit(0)\n", "Model", ["Model() raised SystemExit(0) at my_cell.py:13"]),
]


@pytest.mark.parametrize("body, name, says", EXITS)
def test_user_code_that_exits_is_a_usage_error_naming_it(capsys, tmp_path, body, name, says):
    path = (tanh_cell(tmp_path, **body) if isinstance(body, dict)
            else user_file(tmp_path, body, name="my_cell.py"))
    code, out, err = run(capsys, "check", f"{path}:{name}")
    assert code == EXIT_USAGE and out == "", (code, out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("gradcheck check: error: ") and "Traceback" not in err
    for text in says:
        assert text in last, last
    if "argparse" not in body:          # argparse writes its own usage message first
        assert len(err.strip().splitlines()) == 1, err


def test_ctrl_c_and_generator_exit_in_user_code_keep_their_meaning(capsys, tmp_path):
    from cli import EXIT_INTERRUPTED
    from gradcheck.loader import UserCodeError, user_code

    for kind in (KeyboardInterrupt, GeneratorExit):
        with pytest.raises(kind):
            with user_code("gradient()"):
                raise kind()
    with pytest.raises(ZeroDivisionError):      # errors take their usual way, too
        with user_code("gradient()"):
            1 / 0
    with pytest.raises(UserCodeError, match=r"^gradient\(\) raised SystemExit\(4\)"):
        with user_code("gradient()"):
            raise SystemExit(4)
    path = user_file(tmp_path, "raise KeyboardInterrupt\n")
    code, _, err = run(capsys, "check", f"{path}:X")
    assert code == EXIT_INTERRUPTED and "interrupted" in err


def test_user_output_to_stderr_keeps_stdout_for_the_json(capsys, tmp_path):
    from gradcheck.loader import case_from_target, load_target, user_output_to_stderr

    path = tanh_cell(tmp_path, loss_line="print('in loss')", gradient_line="print('in gradient')",
                     make_case_line="print('in make_case')")
    path.write_text('print("importing the cell")\n' + path.read_text())
    with user_output_to_stderr():
        case = case_from_target(load_target(f"{path}:make_case"), name="make_case", steps=4,
                                batch=2, seed=0)
        result = check_gradients(case.cell, case.params, case.batch)
    print(json.dumps(result.as_dict()))
    out, err = capsys.readouterr()
    assert json.loads(out)["verdict"] == "pass"
    for text in ("importing the cell", "in make_case", "in loss", "in gradient"):
        assert text in err
    with user_output_to_stderr(active=False):
        case.cell.loss(case.params, case.batch)
    assert capsys.readouterr() == ("in loss\n", "")


def test_json_stdout_is_one_object_when_the_cell_prints(capsys, tmp_path):
    path = tanh_cell(tmp_path, loss_line="print('in loss')")
    code, out, err = run(capsys, "check", f"{path}:make_case", "--json")
    assert code == EXIT_PASS, err
    assert json.loads(out)["verdict"] == "pass" and "in loss" in err


def test_a_gradient_that_is_not_a_dict_is_named(capsys, tmp_path):
    path = tanh_cell(tmp_path, gradient_line='return np.zeros_like(p["W"])')
    code, out, err = run(capsys, "check", f"{path}:make_case")
    assert code == EXIT_USAGE and out == ""
    assert ("gradient() must return a dict name -> array, like {'W': dL/dW}; it returned a "
            "NumPy array of shape (3, 6)") in err


def test_a_gradient_in_another_dtype_than_its_parameter_is_refused():
    from gradcheck.check import CellError
    from gradcheck.user_cells import check_gradient_dtypes

    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 4))}
    batch = Batch(rng.normal(size=(5, 2, 3)), np.zeros((5, 2), int), np.ones((5, 2)))
    loss = lambda p, b: float(np.tanh(b.x @ p["W"]).sum())

    def gradient(p, b):
        a = np.tanh(b.x @ p["W"])
        return {"W": np.einsum("tbd,tbk->dk", b.x, 1 - a ** 2).astype(np.float32)}

    cell = function_cell(loss=loss, gradient=gradient, params=params)
    with pytest.raises(CellError, match=r"gradient\(\) returned the gradient of W as float32, "
                                        r"but parameter W is float64"):
        check_gradients(cell, params, batch)
    p32, g64 = {"W": np.ones(2, np.float32)}, {"W": np.ones(2)}
    with pytest.raises(ValueError, match="W as float64, but parameter W is float32"):
        check_gradient_dtypes(p32, g64, "gradient()")
    check_gradient_dtypes(p32, g64, "gradient()", exact=False)     # more precise: allowed
    with pytest.raises(ValueError, match="W as float32, but parameter W is float64"):
        check_gradient_dtypes({"W": np.ones(2)}, {"W": np.ones(2, np.float32)}, "gradient()",
                              exact=False)


def test_a_guarded_cell_is_checked_exactly_as_the_cell_itself():
    from cells import GRU, GRUConfig, get_cell
    from gradcheck.user_cells import GuardedCell

    config = GRUConfig(layers=2)
    cell = get_cell("gru").broken()["blog-reset-delta"](config)
    rng = np.random.default_rng(0)
    params = cell.init_params(rng)
    batch = cell.sample_batch(rng, 5, 3)
    plain = check_gradients(cell, params, batch, seed=0).as_dict()
    guarded = check_gradients(GuardedCell(cell), params, batch, seed=0).as_dict()
    assert plain["verdict"] == "fail" and plain["localisation"] is not None
    for key in ("summary", "localisation", "comparisons", "notes"):
        assert guarded[key] == plain[key], key
    wrapped = GuardedCell(GRU(config))
    assert wrapped.config is config and not hasattr(wrapped, "no_such_method")
    wrapped.flag = 1
    assert wrapped._gradcheck_cell.flag == 1


@pytest.mark.parametrize("override", ["gradient", "loss_and_gradient"])
def test_a_subclass_overriding_one_gradient_method_has_that_method_checked(capsys, tmp_path,
                                                                           override):
    # the reference GRU's loss_and_gradient never calls gradient(): a subclass that
    # overrides gradient() alone must still have its own gradient checked; and its
    # inherited gradient_details() (another gradient) must not localise it
    method = {
        "gradient": ["def gradient(self, params, batch):",
                     "    g = super().gradient(params, batch)"],
        "loss_and_gradient": ["def loss_and_gradient(self, params, batch):",
                              "    loss, g = super().loss_and_gradient(params, batch)"],
    }[override]
    ret = "g" if override == "gradient" else "loss, g"
    lines = ["import numpy as np", "from cells.gru import GRU, GRUConfig",
             "from gradcheck import Case", "", "class MyGRU(GRU):"]
    lines += ["    " + line for line in method + ['    g["W0"][:, 5:10] *= -1.0   # block z negated',
                                                    f"    return {ret}"]]
    lines += ["", "def make_case(seed):", "    cell = MyGRU(GRUConfig())",
              "    rng = np.random.default_rng(seed)", "    params = cell.init_params(rng)",
              "    return Case(cell, params, cell.sample_batch(rng, 5, 3), seed=seed)"]
    path = user_file(tmp_path, "\n".join(lines) + "\n")
    code, out, _ = run(capsys, "check", f"{path}:make_case")
    assert code == EXIT_MISMATCH
    assert out.startswith("cell MyGRU;")                  # its own name, not the reference's
    assert "mismatch on W0 (block z)" in out and "where:" not in out
    assert "not localised by time step: gradient_details()'s per-step contributions to W0" in out


def test_which_gradient_method_is_the_cells():
    from cells.gru import GRU
    from gradcheck.check import _gradient_method
    from gradcheck.user_cells import GuardedCell

    class Own(GRU):
        def gradient(self, params, batch):
            return super().gradient(params, batch)

    class Both(Own):
        def loss_and_gradient(self, params, batch):
            return super().loss_and_gradient(params, batch)

    class Plain:
        def gradient(self, params, batch):
            return {}

    assert _gradient_method(GRU()) == "loss_and_gradient"
    assert _gradient_method(Own()) == "gradient"
    assert _gradient_method(GuardedCell(Own())) == "gradient"
    assert _gradient_method(Both()) == "loss_and_gradient"
    assert _gradient_method(Plain()) == "gradient"
    patched = GRU()
    patched.gradient = lambda params, batch: {}               # set on the instance
    assert _gradient_method(patched) == "gradient"


def test_a_cell_defining_both_gradient_methods_must_give_one_gradient(capsys, tmp_path):
    # gradient() is what a training loop calls; loss_and_gradient() a logging helper:
    # the check runs the latter, and must not pass a wrong gradient() beside it
    path = user_file(tmp_path, '''
        import numpy as np
        from gradcheck import Batch, Case, ParamSpec

        class TanhLayer:
            def param_specs(self):
                return [ParamSpec("W", (3, 6))]

            def loss(self, p, b):
                return float(np.tanh(b.x @ p["W"]).sum())

            def gradient(self, p, b):                # tanh' dropped
                return {"W": np.einsum("tbd,tbk->dk", b.x, np.ones(b.x.shape[:2] + (6,)))}

            def loss_and_gradient(self, p, b):
                a = np.tanh(b.x @ p["W"])
                return float(a.sum()), {"W": np.einsum("tbd,tbk->dk", b.x, 1 - a ** 2)}

        def make_case(seed):
            rng = np.random.default_rng(seed)
            params = {"W": rng.normal(size=(3, 6))}
            batch = Batch(rng.normal(size=(4, 2, 3)), np.zeros((4, 2), int), np.ones((4, 2)))
            return Case(TanhLayer(), params, batch, seed=seed)
        ''')
    code, out, _ = run(capsys, "check", f"{path}:make_case")
    assert code == EXIT_MISMATCH
    assert "fail: gradient() and loss_and_gradient() give different gradients of W" in out


def test_a_wrong_gradient_in_a_base_class_is_checked_beside_a_subclass_s_loss_and_gradient():
    # A overrides gradient() (wrong), B(A) adds loss_and_gradient: the check runs B's, and
    # A's gradient(), what B().gradient() gives a training loop, passed unchecked
    from cells.gru import GRU, GRUConfig

    class A(GRU):
        def gradient(self, params, batch):
            grads = super().gradient(params, batch)
            grads["U0"] = 1.5 * grads["U0"]
            return grads

    class B(A):
        def loss_and_gradient(self, params, batch):
            return super().loss_and_gradient(params, batch)

    cell = B(GRUConfig())
    rng = np.random.default_rng(0)
    params, batch = cell.init_params(rng), cell.sample_batch(rng, 4, 2)
    result = check_gradients(cell, params, batch, oracles="analytic,numeric", seed=0)
    assert not result.passed
    assert any(d.startswith("gradient() and loss_and_gradient() give different gradients of U0")
               for d in result.defects)
    # every element of the gradient checked agrees: localisation finding nothing is not
    # blamed on "a loss term outside the steps"
    assert all(c.passed for c in result.comparisons)
    assert "not in the steps' backward pass" not in result.localisation.sentence()
    # the same layout with a right gradient() passes
    right = type("Right", (GRU,), {"gradient": lambda self, p, b: GRU.gradient(self, p, b)})
    both = type("RightBoth", (right,), {"loss_and_gradient": GRU.loss_and_gradient})
    assert check_gradients(both(GRUConfig()), params, batch, oracles="analytic,numeric",
                           seed=0).passed


def test_an_abstract_gradient_of_a_base_class_is_not_run():
    # the comparison of gradient() with loss_and_gradient() must not call a base class's
    # abstract gradient() (it crashed the check: "the analytic oracle failed")
    from gradcheck import ParamSpec

    class CellBase:
        def param_specs(self):
            return [ParamSpec("W", (3, 2))]

        def gradient(self, p, b):
            raise NotImplementedError

    class TanhCell(CellBase):
        def __init__(self, wrong=1.0):
            self.wrong = wrong

        def loss(self, p, b):
            return float(np.tanh(b.x @ p["W"]).sum())

        def loss_and_gradient(self, p, b):
            a = np.tanh(b.x @ p["W"])
            return float(a.sum()), {"W": self.wrong * np.einsum("tbd,tbk->dk", b.x, 1 - a ** 2)}

    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 2))}
    batch = Batch(rng.normal(size=(4, 2, 3)), np.zeros((4, 2), int), np.ones((4, 2)))
    assert check_gradients(TanhCell(), params, batch).passed
    assert not check_gradients(TanhCell(wrong=1.1), params, batch).passed


def test_a_seed_the_case_does_not_use_is_refused(capsys, tmp_path):
    path = user_file(tmp_path, '''
        import numpy as np
        from cells.gru import GRU
        from gradcheck import Case

        _cell = GRU()
        _rng = np.random.default_rng(0)
        case = Case(_cell, _cell.init_params(_rng), _cell.sample_batch(_rng, 4, 2), seed=0)
        ''')
    code, _, err = run(capsys, "check", f"{path}:case", "--seed", "5")
    assert code == EXIT_USAGE
    assert "case is a Case with its own seed (Case.seed=0): --seed 5 would not be used" in err
    code, out, _ = run(capsys, "check", f"{path}:case", "--oracles", "analytic,numeric")
    assert code == EXIT_PASS and "seed=0; reproduce:" in out and "--seed" not in out.split("reproduce:")[1]


def test_a_file_target_s_reproduce_line_repeats_its_seed_and_oracles(capsys, tmp_path):
    import shlex
    path = user_file(tmp_path, '''
        import numpy as np
        from cells.gru import GRU, GRUConfig
        from cells.gru_symbolic import SymbolicGRU
        from gradcheck import Case

        _cell = GRU()
        _rng = np.random.default_rng(0)
        case = Case(_cell, _cell.init_params(_rng), _cell.sample_batch(_rng, 4, 2))

        def make_case(seed):
            cell = GRU(GRUConfig())
            rng = np.random.default_rng(seed)
            return Case(cell, cell.init_params(rng), cell.sample_batch(rng, 4, 2), seed=seed,
                        symbolic=SymbolicGRU(cell.config), oracles=("analytic", "numeric"))
        ''')
    lines = []
    for argv in ([f"{path}:case", "--seed", "3", "--max-elements", "4"],
                 [f"{path}:make_case", "--oracles", "analytic,numeric,autodiff"]):
        code, out, _ = run(capsys, "check", *argv)
        lines.append(out.split("; reproduce: ")[1].strip())
        again, out_again, err = run(capsys, *shlex.split(lines[-1])[1:])
        assert again == code, err
        verdict = [x for x in out.splitlines() if x.startswith(("pass:", "fail:"))]
        assert verdict == [x for x in out_again.splitlines() if x.startswith(("pass:", "fail:"))]
    # a Case with no seed of its own takes --seed; all three oracles asked for are named
    assert "--seed 3" in lines[0]
    assert "--oracles analytic,numeric,autodiff" in lines[1]


def test_the_reference_cell_s_gradient_is_not_run_twice(monkeypatch):
    # its gradient() is loss_and_gradient()'s by construction (marked gradcheck_derived):
    # the check compares a cell's two methods only where they can differ
    from cells.gru import GRU
    from cells.stacked import StackedCell
    cell = GRU()
    rng = np.random.default_rng(0)
    params, batch = cell.init_params(rng), cell.sample_batch(rng, 4, 2)
    calls = []
    original = StackedCell._backprop
    monkeypatch.setattr(StackedCell, "_backprop", lambda self, p, b, record: calls.append(
        record is None) or original(self, p, b, record))
    assert check_gradients(cell, params, batch, oracles="analytic,numeric",
                           localise=False).passed
    assert calls == [True]                          # one backward pass: loss_and_gradient's
