"""Bringing your own cell: the blog-style model adapter, make_case files, and bad files."""

import json
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
