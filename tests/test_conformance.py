"""Forward conformance: 'gradcheck compare' finds the seed question's rval[0] and similar bugs."""

import json
from pathlib import Path

import numpy as np
import pytest

from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, main
from gradcheck.conformance import compare_states

ROOT = Path(__file__).resolve().parents[1]
SEED_GRU = ROOT / "cells" / "zoo" / "theano_question_gru.py"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rval0_is_found_as_a_shape_mismatch_equal_to_step_0(capsys):
    code, out, _ = run(capsys, "compare", f"{SEED_GRU}:gru_layer", "--json")
    assert code == EXIT_MISMATCH
    doc = json.loads(out)
    assert doc["verdict"] == "fail"
    assert doc["user_shape"] == [3, 4] and doc["reference_shape"] == [6, 3, 4]
    assert doc["matches_step"] == 0 and doc["first_step"] == 0
    assert "single-output scan indexed with [0]" in doc["message"]
    # the convention search found the seed's: the update gate weights the new candidate
    assert doc["reference"] == {"cell": "gru", "reset": "before", "update": "new", "gate": "sigmoid"}


@pytest.mark.parametrize("mask", ["none", "random"])
def test_the_fixed_layer_conforms(capsys, mask):
    code, out, _ = run(capsys, "compare", f"{SEED_GRU}:gru_layer_fixed", "--mask", mask,
                       "--steps", "7")
    assert code == EXIT_PASS, out
    assert "pass: the layer's states equal the reference's at every step (T = 7)" in out


def test_a_later_divergence_names_its_step(capsys, tmp_path):
    # the mask forgotten in the carry: identical until the first masked step
    source = SEED_GRU.read_text().replace(
        "return m_[:, None] * h + (1.0 - m_)[:, None] * h_", "return h")
    assert source != SEED_GRU.read_text()
    path = tmp_path / "no_mask.py"
    path.write_text(source)
    code, out, _ = run(capsys, "compare", f"{path}:gru_layer_fixed", "--mask", "lengths",
                       "--seed", "2", "--update", "new", "--json")
    doc = json.loads(out)
    assert code == EXIT_MISMATCH and doc["first_step"] > 0
    assert doc["message"].startswith(f"the states first diverge at step t = {doc['first_step']}")


def test_a_layer_that_ignores_the_mask_is_compared_in_its_own_convention(capsys, tmp_path):
    # with a random mask every convention can diverge at step 0; the layer's own (update
    # "new") differs at masked entries only and must be the one reported, with the mask
    # named (it was reported against update "old", "so the conventions differ")
    source = SEED_GRU.read_text().replace(
        "return m_[:, None] * h + (1.0 - m_)[:, None] * h_", "return h")
    path = tmp_path / "no_mask.py"
    path.write_text(source)
    code, out, _ = run(capsys, "compare", f"{path}:gru_layer_fixed", "--mask", "random",
                       "--json")
    doc = json.loads(out)
    assert code == EXIT_MISMATCH and doc["reference"]["update"] == "new"
    assert "is masked (the reference carries the state over there): does the layer apply " \
           "the mask?" in doc["message"]


def test_a_wrong_convention_fails_at_step_0(capsys):
    code, out, _ = run(capsys, "compare", f"{SEED_GRU}:gru_layer_fixed", "--update", "old")
    assert code == EXIT_MISMATCH
    assert "step 0 already differs, so the equations or conventions differ" in out


@pytest.mark.parametrize("target, message", [
    ("nope.py:gru_layer", "no such file"),
    (f"{SEED_GRU}:nothing", "defines no 'nothing'"),
    (f"{SEED_GRU}:param_init_gru", "does not take (tparams, state_below, options, prefix, mask)"),
    ("gru", "is not of the form path/to/file.py:layer_function"),
])
def test_bad_targets(capsys, target, message):
    code, out, err = run(capsys, "compare", target)
    assert code == EXIT_USAGE and message in err and len(err.strip().splitlines()) == 1


def test_rval0_passes_every_gradient_check_but_a_note_flags_U(capsys):
    code, out, _ = run(capsys, "check", f"{SEED_GRU}:gru_layer", "--json")
    doc = json.loads(out)
    assert code == EXIT_PASS and doc["oracles"] == ["numeric", "autodiff"]
    assert any("gradient of gru_U is exactly zero in every oracle" in n for n in doc["notes"])


def test_compare_states_directly():
    ref = np.arange(24, dtype=float).reshape(2, 3, 4)
    assert compare_states(ref.copy(), ref).passed
    other = ref.copy()
    other[1, 2, 3] += 1e-3
    r = compare_states(other, ref)
    assert (r.first_step, r.element) == (1, (1, 2, 3))
    r = compare_states(ref[1], ref)
    assert r.matches_step == 1 and "equals the reference's state at step 1" in r.message


@pytest.mark.parametrize("options", [["--oracles", "analytic,autodiff"],
                                     ["--oracles", "analytic,numeric,autodiff"],
                                     ["--mode", "fast"]])
def test_a_tutorial_layer_has_no_analytic_gradient_to_check(capsys, options):
    # the layer's gradient() is PyTensor's: as "analytic" it agreed with autodiff by
    # construction (a wrong symbolic gradient passed analytic,autodiff with exit 0, and
    # with all three oracles the right numeric one was named the odd one out)
    code, _, err = run(capsys, "check", f"{SEED_GRU}:gru_layer_fixed", *options)
    assert code == EXIT_USAGE
    assert "gradient is PyTensor's own, the autodiff oracle's, not a hand-written BPTT" in err
    assert "oracles numeric,autodiff" in err
    code, out, _ = run(capsys, "check", f"{SEED_GRU}:gru_layer_fixed")
    assert code == EXIT_PASS and "numeric ~ autodiff" in out


def test_a_width_of_one_says_what_pytensor_makes_of_it(capsys):
    # the tutorial layer at --hidden 1 fails inside PyTensor's scan (a width-1 state is
    # typed broadcastable); the one-line error says so and what to use instead
    code, _, err = run(capsys, "compare", f"{SEED_GRU}:gru_layer_fixed", "--hidden", "1")
    assert code == EXIT_USAGE and len(err.strip().splitlines()) == 1
    assert "PyTensor takes a state of width 1 as broadcastable" in err
    assert "use --hidden 2 or more" in err
    code, _, _ = run(capsys, "compare", f"{SEED_GRU}:gru_layer_fixed", "--hidden", "2")
    assert code == EXIT_PASS
