"""The pytest plugin, run through pytester: a user's passing and failing tests, options, xdist."""

import pytest

CASE = '''
import numpy as np
import pytest
from cells.zoo.gru_bugs import BROKEN_GRUS
from cells.gru import GRU, GRUConfig


def case(cls, seed):
    cell = cls(GRUConfig(layers=2))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, 5, 3)
'''


def write(pytester, body):
    pytester.makepyfile(test_user=CASE + body)


def test_help_lists_the_options(pytester):
    result = pytester.runpytest("--help")
    for option in ("--gradcheck-report-dir", "--gradcheck-seed", "--gradcheck-atol",
                   "--gradcheck-rtol", "--gradcheck-fast"):
        result.stdout.fnmatch_lines([f"*{option}*"])


def test_a_correct_cell_passes_in_one_line(pytester):
    write(pytester, '''
def test_gru(gradcheck):
    result = gradcheck(*case(GRU, gradcheck.seed))
    assert result.passed and result.seed == 0

def test_lstm(gradcheck):
    from cells.lstm import LSTM, LSTMConfig
    cell = LSTM(LSTMConfig(layers=2))
    rng = np.random.default_rng(gradcheck.seed)
    params = cell.init_params(rng)
    assert gradcheck(cell, params, cell.sample_batch(rng, 4, 2)).passed
''')
    pytester.runpytest("-q").assert_outcomes(passed=2)


def test_a_broken_cell_fails_with_element_values_sentence_and_report(pytester, tmp_path):
    write(pytester, '''
def test_gru(gradcheck):
    gradcheck(*case(BROKEN_GRUS["reset-gate-derivative"], 0))
''')
    reports = tmp_path / "reports"
    result = pytester.runpytest("-q", f"--gradcheck-report-dir={reports}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*gradcheck: fail: mismatch on W0 (blocks r, z, h)*worst: *(block r): analytic = *, numeric = *",
        "*where: the error enters at t = 4 in layer 1, block r of W1, U1, b1*",
        "*seed: 0*",
        f"*report: {reports}*test_user.py_test_gru-1.html*",
    ])
    files = list(reports.glob("*.html"))
    assert len(files) == 1 and files[0].stat().st_size > 10_000


def test_tolerance_options_and_marker(pytester):
    write(pytester, '''
def test_cli_tolerance(gradcheck):
    gradcheck(*case(GRU, 0))

@pytest.mark.gradcheck(atol=1e-14, rtol=1e-14)
def test_marker_tolerance(gradcheck):
    gradcheck(*case(GRU, 0))
''')
    # the marker's tolerance is too tight for finite differences: that test fails alone
    pytester.runpytest("-q").assert_outcomes(passed=1, failed=1)
    # on the command line, the tight tolerance reaches every test
    pytester.runpytest("-q", "--gradcheck-atol=1e-14", "--gradcheck-rtol=1e-14").assert_outcomes(
        failed=2)


def test_seed_and_fast_options(pytester):
    write(pytester, '''
def test_options(gradcheck):
    assert gradcheck.seed == 42 and gradcheck.fast
    result = gradcheck(*case(GRU, gradcheck.seed))
    assert result.oracles == ("analytic", "numeric") and result.localisation is None
    assert result.seed == 42
''')
    pytester.runpytest("-q", "--gradcheck-seed=42", "--gradcheck-fast").assert_outcomes(passed=1)


def test_works_under_xdist(pytester, tmp_path):
    pytest.importorskip("xdist")
    write(pytester, '''
@pytest.mark.parametrize("bug", ["reset-gate-derivative", "wrapped-time-index"])
def test_broken(gradcheck, bug):
    gradcheck(*case(BROKEN_GRUS[bug], 0), oracles="analytic,numeric")

def test_good(gradcheck):
    gradcheck(*case(GRU, 0), oracles="analytic,numeric")
''')
    reports = tmp_path / "xdist-reports"
    result = pytester.runpytest_subprocess("-q", "-n", "2", f"--gradcheck-report-dir={reports}")
    result.assert_outcomes(passed=1, failed=2)
    assert len(list(reports.glob("*.html"))) == 2
