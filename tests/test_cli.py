"""The command line: table, JSON contract, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, console_main, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--oracles", "analytic,numeric"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_on_pass(capsys):
    code, out, err = run(capsys, "check", "gru", *FAST)
    assert code == EXIT_PASS, out + err
    assert "U0" in out and "analytic ~ numeric" in out and "seed=0" in out
    assert any(line.startswith("pass: ") for line in out.splitlines())
    assert "where: every per-step gate block agrees at every step" in out


def test_json_contract(capsys):
    code, out, _ = run(capsys, "check", "gru", "--layers", "2", "--seed", "11", "--json", *FAST)
    assert code == EXIT_PASS
    doc = json.loads(out)
    assert doc["verdict"] == "pass" and doc["seed"] == 11
    assert doc["cell"]["layers"] == 2 and doc["cell"]["name"] == "gru"
    assert {"reset", "gate", "readout", "embedding", "steps", "batch", "hidden_size"} <= set(doc["cell"])
    names = {c["parameter"] for c in doc["comparisons"]}
    assert names == {"W0", "U0", "b0", "W1", "U1", "b1", "V", "c"}
    for c in doc["comparisons"]:
        assert {"parameter", "shape", "oracles", "max_abs_error", "max_rel_error", "verdict",
                "worst_index", "worst_block"} <= set(c)
        assert c["oracles"] == ["analytic", "numeric"] and c["verdict"] == "pass"
        assert len(c["worst_index"]) == len(c["shape"])
    assert "--seed 11" in doc["command"]


def test_tolerance_override_turns_a_pass_into_a_mismatch(capsys):
    # finite differences carry ~1e-10 of error: a 1e-14 tolerance must fail, naming an element
    code, out, _ = run(capsys, "check", "gru", "--atol", "1e-14", "--rtol", "1e-14", "--json", *FAST)
    assert code == EXIT_MISMATCH
    doc = json.loads(out)
    assert doc["verdict"] == "fail"
    bad = [c for c in doc["comparisons"] if c["verdict"] == "fail"]
    assert bad and all(c["failed_elements"] > 0 for c in bad)


@pytest.mark.parametrize("argv, fragment", [
    (["check", "gru", "--steps", "0"], "--steps: 0 must be at least 1"),
    (["check", "gru", "--hidden", "-3"], "--hidden: -3 must be at least 1"),
    (["check", "gru", "--batch", "two"], "--batch: 'two' is not an integer"),
    (["check", "gru", "--layers", "0"], "--layers"),
    (["check", "gru", "--vocab", "0"], "--vocab"),
    (["check", "gru", "--classes", "0"], "--classes"),
    (["check", "gru", "--input", "0"], "--input"),
    (["check", "gru", "--reset", "sideways"], "--reset: invalid choice"),
    (["check", "gru", "--gate", "relu"], "--gate: invalid choice"),
    (["check", "gru", "--readout", "max"], "--readout: invalid choice"),
    (["check", "gru", "--atol", "-1"], "--atol: atol=-1.0 must be a finite number, 0 or more"),
    (["check", "gru", "--rtol", "-1e-3"], "--rtol"),
    (["check", "gru", "--rtol", "1"], "rtol=1.0 must be less than 1"),
    (["check", "gru", "--atol", "nan"], "--atol"),
    (["check", "gru", "--classes", "1"], "--classes: 1 must be at least 2"),
    (["check", "gru", "--oracles", ""], "has an empty name"),
    (["check", "gru", "--oracles", "analytic,numeric,"], "has an empty name"),
    (["check", "gru", "--embedding-sample", "3"], "--embedding-sample applies to cells with "
                                                  "--embedding only"),
    (["check", "gru", "--directions", "3"], "--directions applies to --mode fast only"),
    (["check", "examples/blog_gru.py:BlogGRU", "--backend", "theano"],
     "--backend applies to built-in cells only"),
    (["check", "gru", "--atol", "1e9"], "lets a zero gradient pass on every parameter"),
    (["check", "gru", "--atol", "1e9", "--bug", "reset-gate-derivative"],
     "does not change the gradient on this draw"),
    (["check", "gru", "--bug", "reset-gate-derivative", "--oracles", "numeric,autodiff"],
     "include the analytic oracle"),
    (["check", "gru", "--bug", "off-by-one-window"], "use window truncation with fewer steps"),
    (["check", "gru", "--bug", "mask-ignored-in-backward", "--mask", "lengths"],
     "use --mask random"),
    (["check", "gru", "--bug", "blog-reset-delta", "--reset", "after"], "use --reset before"),
    (["check", "gru", "--bug", "blog-hard-sigmoid-slope"], "use --gate hard"),
    (["check", "gru", "--bug", "blog-output-delta-every-layer"], "use --layers 2 or more"),
    (["check", "gru", "--bug", "blog-embedding-word"], "use --embedding"),
    (["check", "gru", "--bug", "blog-empty-loop", "--truncate", "2"], "leave out --truncate"),
    (["check", "gru", "--layers", "1000000"], "choose smaller sizes"),
    # bugs that the drawn data leave without effect: no earlier state at T = 1, a tail
    # window of masked steps, hard gates that never saturate on this draw
    (["check", "gru", "--bug", "reset-gate-derivative", "--steps", "1"],
     "does not change the gradient on this draw"),
    (["check", "lstm", "--bug", "forget-gate-derivative", "--steps", "1"],
     "does not change the gradient on this draw"),
    (["check", "lstm", "--bug", "forget-gate-derivative", "--mask", "lengths", "--truncate", "2",
      "--truncation", "tail"], "does not change the gradient on this draw"),
    (["check", "gru", "--bug", "blog-hard-sigmoid-slope", "--gate", "hard", "--seed", "19",
      "--steps", "2", "--batch", "1"], "does not change the gradient on this draw"),
    (["check", "gru", "--oracles", "analytic"], "at least two"),
    (["check", "gru", "--oracles", "analytic,magic"], "unknown oracle 'magic'"),
    (["check", "lstm2"], "unknown cell 'lstm2'"),
    (["check"], "cell"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err


def test_list_shows_the_gru(capsys):
    code, out, _ = run(capsys, "list")
    assert code == EXIT_PASS and out.startswith("gru")


@pytest.mark.parametrize("prefix", [[sys.executable, "-m", "gradcheck"],
                                    [sys.executable, str(ROOT / "cli.py")]])
def test_entry_points_run(prefix):
    proc = subprocess.run(prefix + ["check", "gru", "--steps", "0"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr
    proc = subprocess.run(prefix + ["list"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == EXIT_PASS and "gru" in proc.stdout


def test_console_script_is_installed():
    from importlib.metadata import entry_points
    (ep,) = entry_points(group="console_scripts", name="gradcheck")
    assert ep.load() is console_main


def test_the_command_returns_mains_code_and_freezes_its_objects_for_exit():
    code = ("import gc, sys, cli; sys.argv = ['gradcheck'] + sys.argv[1:]; "
            "frozen = gc.get_freeze_count(); code = cli.console_main(); "
            "print(code, frozen, gc.get_freeze_count() > 0)")
    for argv, want in ((["list"], EXIT_PASS), (["check", "no_such_file.py:cell"], EXIT_USAGE)):
        proc = subprocess.run([sys.executable, "-c", code] + argv, capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.stdout.split()[-3:] == [str(want), "0", "True"], proc.stderr


def test_default_check_runs_all_three_oracle_pairs(capsys):
    code, out, _ = run(capsys, "check", "gru", "--json")
    assert code == EXIT_PASS
    doc = json.loads(out)
    assert doc["oracles"] == ["analytic", "numeric", "autodiff"] and doc["forward_agrees"]
    pairs = {tuple(c["oracles"]) for c in doc["comparisons"]}
    assert pairs == {("analytic", "numeric"), ("analytic", "autodiff"), ("numeric", "autodiff")}
    assert len(doc["comparisons"]) == 3 * 5


@pytest.mark.parametrize("argv", [
    ["--mode", "fast", "--directions", "4", "--max-elements", "3", "--numeric", "central",
     "--oracles", "analytic,numeric", "--atol", "1e-07"],
    ["--embedding", "--embedding-sample", "all", "--oracles", "analytic,numeric", "--rtol", "0.0"],
])
def test_the_reproduce_command_repeats_every_checking_option(capsys, argv):
    code, out, _ = run(capsys, "check", "gru", "--json", *argv)
    assert code == EXIT_PASS
    command = json.loads(out)["command"]
    for option in argv:
        assert option in command.split(), (option, command)


def test_a_file_targets_reproduce_command_keeps_its_tolerances(capsys):
    code, out, _ = run(capsys, "check", "examples/blog_gru.py:BlogGRU", "--json", "--atol",
                       "0.001", "--mode", "fast", "--oracles", "analytic,numeric")
    command = json.loads(out)["command"].split()
    assert code == EXIT_PASS
    assert command[command.index("--atol") + 1] == "0.001" and "fast" in command
    assert command[command.index("--oracles") + 1] == "analytic,numeric"


@pytest.mark.parametrize("bug, wake", [
    ("off-by-one-window", ["--steps", "5", "--truncate", "4"]),
    ("mask-ignored-in-backward", ["--mask", "random"]),
    ("blog-output-delta-every-layer", ["--layers", "2"]),
])
def test_a_dormant_bug_shows_with_the_options_its_refusal_names(capsys, bug, wake):
    code, _, _ = run(capsys, "check", "gru", "--bug", bug, "--oracles", "analytic,numeric", *wake)
    assert code == EXIT_MISMATCH


def test_tolerance_zero_is_a_purely_relative_or_absolute_test(capsys):
    for option in ("--atol", "--rtol"):
        code, out, _ = run(capsys, "check", "gru", "--oracles", "analytic,numeric", option, "0")
        assert code == EXIT_PASS, out
    code, _, _ = run(capsys, "check", "gru", "--oracles", "analytic,numeric", "--atol", "0",
                     "--bug", "reset-gate-derivative")
    assert code == EXIT_MISMATCH


def test_list_prints_whole_first_sentences(capsys):
    code, out, _ = run(capsys, "list")
    line = next(ln for ln in out.splitlines() if "--bug off-by-one-window" in ln)
    assert line.endswith("instead of k + 1 (max(0, t - k) .. t)."), line


def test_a_truncation_longer_than_the_sequence_is_said_to_be_full(capsys):
    code, out, _ = run(capsys, "check", "gru", "--oracles", "analytic,numeric", "--truncate", "9")
    assert code == EXIT_PASS and "truncate=9 reaches every step of this T=5 sequence" in out
    code, out, _ = run(capsys, "check", "gru", "--oracles", "analytic,numeric", "--truncate", "3")
    assert code == EXIT_PASS and "reaches every step" not in out


def test_version(capsys):
    from gradcheck import __version__
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    from cells.gate_kernels import status
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradcheck {__version__}; {status()}"


def test_list_shows_the_lstm_zoo(capsys):
    code, out, _ = run(capsys, "list")
    lstm = out[out.index("\nlstm"):]
    assert "--bug cell-carry-without-forget" in lstm
    line = next(ln for ln in lstm.splitlines() if "--bug off-by-one-window" in ln)
    assert line.endswith("instead of k + 1 (max(0, t - k) .. t)."), line


@pytest.mark.parametrize("where", ["param_init_gru", "gru_layer"])
def test_compare_turns_an_exit_in_the_layer_file_into_exit_2(capsys, tmp_path, where):
    body = {"param_init_gru": "    return params", "gru_layer": "    return state_below"}
    body[where] = "    import sys; sys.exit(0)"
    path = tmp_path / "exiting.py"
    path.write_text("def param_init_gru(options, params, prefix='gru'):\n"
                    f"{body['param_init_gru']}\n\n"
                    "def gru_layer(tparams, state_below, options, prefix='gru', mask=None):\n"
                    f"{body['gru_layer']}\n")
    code, out, err = run(capsys, "compare", f"{path}:gru_layer")
    assert code == EXIT_USAGE and "SystemExit(0) at exiting.py" in err, err


def test_a_size_the_file_target_is_not_built_with_is_refused(capsys, tmp_path):
    # the blog model is built with a sequence length, not a batch size
    code, _, err = run(capsys, "check", "examples/blog_gru.py:BlogGRU", "--batch", "7")
    assert code == EXIT_USAGE and "BlogGRU is not built with a batch argument" in err
    code, out, _ = run(capsys, "check", "examples/blog_gru.py:BlogGRU", "--steps", "7",
                       "--json", "--oracles", "analytic,numeric")
    command = json.loads(out)["command"].split()
    assert code == EXIT_PASS and command[command.index("--steps") + 1] == "7"
    assert "--batch" not in command


def test_a_make_case_is_given_the_sizes_its_signature_names(capsys, tmp_path):
    path = tmp_path / "cell.py"
    path.write_text(
        "import numpy as np\n"
        "from gradcheck import Batch, Case, function_cell\n\n"
        "def make_case(seed, steps):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    params = {'w': rng.normal(size=steps)}\n"
        "    cell = function_cell(loss=lambda p, b: float(np.sum(np.sin(p['w']))),\n"
        "                         gradient=lambda p, b: {'w': np.cos(p['w'])}, params=params)\n"
        "    return Case(cell, params, Batch(np.zeros((steps, 1, 1)), np.zeros((steps, 1), int),\n"
        "                                    np.ones((steps, 1))))\n")
    code, out, _ = run(capsys, "check", f"{path}:make_case", "--steps", "4", "--json")
    doc = json.loads(out)
    assert code == EXIT_PASS and doc["comparisons"][0]["shape"] == [4]
    assert "--steps 4" in doc["command"] and "--batch" not in doc["command"]
    code, _, err = run(capsys, "check", f"{path}:make_case", "--batch", "2")
    assert code == EXIT_USAGE and "make_case is not built with a batch argument" in err


@pytest.mark.parametrize("argv, code", [
    (["check", "gru", "--oracles", "analytic,numeric"], EXIT_PASS),
    (["check", "gru", "--oracles", "analytic,numeric", "--bug", "reset-gate-derivative"],
     EXIT_MISMATCH),
    (["list"], EXIT_PASS),
])
def test_a_reader_that_goes_away_ends_the_output_not_the_verdict(argv, code):
    # `gradcheck check ... | head -1`: the pipe closes before the table is written;
    # the exit code is still the check's, with no "internal error: BrokenPipeError"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py")] + argv, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                             # before the interpreter has even started
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == code, err
    assert "error" not in err.lower(), err


@pytest.mark.parametrize("traceback", [False, True])
def test_an_internal_error_exits_3_with_or_without_its_traceback(capsys, monkeypatch, traceback):
    import gradcheck.runner
    from cli import EXIT_INTERNAL

    def broken(*args, **kwargs):
        raise RuntimeError("a bug of gradcheck's own")

    monkeypatch.setattr(gradcheck.runner, "check_builtin", broken)
    code = main((["--traceback"] if traceback else []) + ["check", "gru"])
    _, err = capsys.readouterr()
    assert code == EXIT_INTERNAL                    # never 1, the mismatch code
    if traceback:
        assert "Traceback (most recent call last)" in err and "a bug of gradcheck's own" in err
    else:
        assert err.strip() == ("gradcheck check: internal error: RuntimeError: a bug of "
                               "gradcheck's own (rerun with --traceback)")


def test_a_case_seed_that_is_not_an_integer_is_a_usage_error(capsys, tmp_path):
    path = tmp_path / "bad_seed.py"
    path.write_text("from cells.gru import GRU\nimport numpy as np\nfrom gradcheck import Case\n"
                    "def make_case(seed):\n"
                    "    cell = GRU()\n"
                    "    rng = np.random.default_rng(seed)\n"
                    "    return Case(cell, cell.init_params(rng), cell.sample_batch(rng, 3, 2),"
                    " seed='abc')\n")
    code = main(["check", f"{path}:make_case"])
    _, err = capsys.readouterr()
    assert code == EXIT_USAGE
    assert "make_case gives Case.seed='abc': the seed must be an integer" in err


@pytest.mark.parametrize("argv, says", [
    (["--vocab", "50"], "--vocab applies to cells with --embedding only"),
    (["--truncation", "tail"], "--truncation applies with --truncate K only"),
    (["--backend", "theano", "--oracles", "analytic,numeric"],
     "--backend names the autodiff oracle's library, which this check does not run"),
    (["--numeric", "complex", "--oracles", "analytic,autodiff"],
     "--numeric applies to the numeric oracle, which this check does not run"),
    (["--mode", "fast", "--oracles", "analytic,autodiff"], "--mode applies to the numeric oracle"),
    (["--max-elements", "5", "--oracles", "analytic,autodiff"],
     "--max-elements applies to the numeric oracle"),
    (["--embedding", "--embedding-sample", "3", "--oracles", "analytic,autodiff"],
     "--embedding-sample applies to the numeric oracle"),
])
def test_options_the_check_would_not_read_are_refused(capsys, argv, says):
    code, _, err = run(capsys, "check", "gru", *argv)
    assert code == EXIT_USAGE and says in err


def test_embedding_sample_is_refused_for_a_file_cell_without_an_embedding(capsys):
    code, _, err = run(capsys, "check", f"{ROOT / 'examples' / 'blog_gru.py'}:BlogGRU",
                       "--embedding-sample", "2")
    assert code == EXIT_USAGE and "BlogGRU's cell declares none" in err


@pytest.mark.parametrize("argv, says", [
    (["check", "gru", "--classes", "1"], "1 must be at least 2"),
    (["check", "examples/blog_gru.py"], "is a path, not a built-in cell: name what to check"),
    (["check", "gru", "--rtol", "0.999999"], "could not fail; choose a smaller rtol"),
    (["check", "examples/blog_gru.py:BlogGRU", "--oracles", "analytic,autodiff"],
     "--oracles asks for autodiff, but BlogGRU gives no symbolic twin"),
])
def test_usage_errors_name_what_to_change(capsys, monkeypatch, argv, says):
    monkeypatch.chdir(ROOT)
    try:
        code = main(argv)
    except SystemExit as stop:                  # argparse's own refusals exit from parse_args
        code = stop.code
    assert code == EXIT_USAGE and says in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["check", "gru", "--oracles", "analytic,numeric"],
    ["check", "gru", "--embedding", "--truncate", "2", "--truncation", "tail",
     "--max-elements", "3", "--oracles", "analytic,numeric"],
    ["check", "lstm", "--mode", "fast", "--oracles", "analytic,numeric", "--mask", "random"],
    ["check", "gru", "--bug", "reset-gate-derivative", "--oracles", "analytic,numeric"],
])
def test_the_reproduce_line_runs_and_gives_the_same_verdict(capsys, argv):
    import shlex
    code, out, _ = run(capsys, *argv)
    line = next(x for x in out.splitlines() if "; reproduce: " in x).split("; reproduce: ")[1]
    again, out_again, err = run(capsys, *shlex.split(line)[1:])
    assert again == code, err
    summary = [x for x in out.splitlines() if x.startswith(("pass:", "fail:"))]
    assert summary == [x for x in out_again.splitlines() if x.startswith(("pass:", "fail:"))]
