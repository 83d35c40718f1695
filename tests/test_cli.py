"""The command line: table, JSON contract, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, main

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
    (["check", "gru", "--atol", "0"], "--atol: 0 must be a positive finite number"),
    (["check", "gru", "--rtol", "-1e-3"], "--rtol"),
    (["check", "gru", "--atol", "nan"], "--atol"),
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
    assert ep.load() is main


def test_default_check_runs_all_three_oracle_pairs(capsys):
    code, out, _ = run(capsys, "check", "gru", "--json")
    assert code == EXIT_PASS
    doc = json.loads(out)
    assert doc["oracles"] == ["analytic", "numeric", "autodiff"] and doc["forward_agrees"]
    pairs = {tuple(c["oracles"]) for c in doc["comparisons"]}
    assert pairs == {("analytic", "numeric"), ("analytic", "autodiff"), ("numeric", "autodiff")}
    assert len(doc["comparisons"]) == 3 * 5
