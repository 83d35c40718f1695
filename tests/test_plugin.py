"""The pytest plugin, run through pytester: a user's passing and failing tests, options, xdist."""

import hashlib

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


def report_name(nodeid, readable, n=1):
    """The report file name the plugin gives the ``n``-th failing check of ``nodeid``."""
    return f"{readable}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}-{n}.html"


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
        f"*report: {reports}*{report_name('test_user.py::test_gru', 'test_user.py_test_gru')}",
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


FAST_EXPLICIT = '''
from cells.gru_symbolic import SymbolicGRU
from gradcheck import Case


def with_symbolic():
    cell, params, batch = case(GRU, 0)
    return cell, params, batch, SymbolicGRU(cell.config)


def test_argument(gradcheck):
    cell, params, batch, symbolic = with_symbolic()
    result = gradcheck(cell, params, batch, symbolic=symbolic, oracles="analytic,autodiff")
    assert result.oracles == ("analytic", "autodiff")


@pytest.mark.gradcheck(oracles="analytic,autodiff")
def test_marker(gradcheck):
    cell, params, batch, symbolic = with_symbolic()
    assert gradcheck(cell, params, batch, symbolic=symbolic).oracles == ("analytic", "autodiff")


def test_case_oracles(gradcheck):
    cell, params, batch, symbolic = with_symbolic()
    chosen = Case(cell, params, batch, symbolic=symbolic, oracles=("analytic", "autodiff"))
    assert gradcheck(chosen).oracles == ("analytic", "autodiff")


def test_default(gradcheck):
    cell, params, batch, symbolic = with_symbolic()
    result = gradcheck(cell, params, batch, symbolic=symbolic)
    assert result.oracles == (("analytic", "numeric") if gradcheck.fast
                              else ("analytic", "numeric", "autodiff"))
    assert (result.localisation is None) == gradcheck.fast
'''


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_explicit_oracles_are_honoured_and_fast_only_changes_the_default(pytester, fast):
    """An oracles= argument, the marker's oracles and a Case's oracles win over
    --gradcheck-fast, which sets the default alone (analytic and numeric)."""
    write(pytester, FAST_EXPLICIT)
    options = ["-q"] + (["--gradcheck-fast"] if fast else [])
    # in a subprocess: in-process, the fast run's first PyTensor compile failed here
    # (TypeError: mask must be `Variable` ...), which the same file run by pytest does not
    pytester.runpytest_subprocess(*options).assert_outcomes(passed=4)


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


def library_refusal(name, value):
    """gradcheck.tolerance's message refusing ``name=value``, or None if it accepts it."""
    from gradcheck.tolerance import resolve_tolerance
    try:
        resolve_tolerance(**{name: value})
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name, text", [
    ("atol", "-1"), ("atol", "nan"), ("atol", "inf"), ("atol", "0"),
    ("rtol", "-1"), ("rtol", "0"), ("rtol", "1"),
])
def test_tolerance_options_are_checked_at_startup_as_the_library_checks(pytester, name, text):
    """A value the library refuses stops the run before collection, with its message."""
    write(pytester, f'''
def test_gru(gradcheck):
    try:
        gradcheck(*case(GRU, 0), oracles="analytic,numeric")
    except pytest.fail.Exception:
        pass                            # a tolerance of 0 may fail the check: not the point
    assert gradcheck.results[0].comparisons[0].tolerance.{name} == {float(text)!r}
''')
    result = pytester.runpytest("-q", f"--gradcheck-{name}", text)
    refusal = library_refusal(name, float(text))
    if refusal is None:                 # the value reaches the check
        result.assert_outcomes(passed=1)
    else:
        assert refusal.startswith(f"{name}={float(text)!r} ")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: --gradcheck-{refusal}"])
        result.stdout.no_fnmatch_line("*test_gru*")


def test_a_negative_seed_stops_the_run_before_collection(pytester):
    write(pytester, '''
def test_gru(gradcheck):
    gradcheck(*case(GRU, gradcheck.seed))
''')
    result = pytester.runpytest("-q", "--gradcheck-seed", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --gradcheck-seed=-1 must be between 0 and 2**63 - 1"])
    result.stdout.no_fnmatch_line("*test_gru*")


def test_marker_arguments_other_than_the_options_fail_the_test(pytester):
    write(pytester, '''
@pytest.mark.gradcheck(atoll=1e-12)
def test_misspelt(gradcheck):
    gradcheck(*case(GRU, 0))

@pytest.mark.gradcheck(0.5)
def test_positional(gradcheck):
    gradcheck(*case(GRU, 0))
''')
    result = pytester.runpytest("-q")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines_random([
        "*test_user.py::test_misspelt: @pytest.mark.gradcheck got unknown argument atoll=1e-12;"
        " it accepts atol, rtol, oracles*",
        "*test_user.py::test_positional: @pytest.mark.gradcheck takes keyword arguments only"
        " (atol, rtol, oracles), got positional 0.5*",
    ])


def test_report_names_are_unique_per_node_id_and_stable(pytester, tmp_path):
    write(pytester, '''
@pytest.mark.parametrize("bug", ["reset-gate-derivative"] * 2, ids=["a/b", "a_b"])
def test_broken(gradcheck, bug):
    gradcheck(*case(BROKEN_GRUS[bug], 0), oracles="analytic,numeric")
''')
    reports = tmp_path / "reports"
    expected = {report_name(f"test_user.py::test_broken[{i}]", "test_user.py_test_broken_a_b")
                for i in ("a/b", "a_b")}
    assert len(expected) == 2
    for _ in range(2):   # a second run writes the same two names
        result = pytester.runpytest("-q", f"--gradcheck-report-dir={reports}")
        result.assert_outcomes(failed=2)
        assert {f.name for f in reports.glob("*.html")} == expected
        result.stdout.fnmatch_lines_random([f"*report: {reports / name}*" for name in expected])


def test_a_case_s_info_reaches_the_result_and_the_failure(pytester, tmp_path):
    # README: a Case's info "is recorded in the result's cell"; through the fixture too
    write(pytester, '''
from gradcheck import Case

def test_good(gradcheck):
    cell, params, batch = case(GRU, 0)
    result = gradcheck(Case(cell, params, batch, info={"variant": "mine-v2"}))
    assert result.as_dict()["cell"]["variant"] == "mine-v2"

def test_broken(gradcheck):
    cell, params, batch = case(BROKEN_GRUS["reset-gate-derivative"], 0)
    gradcheck(Case(cell, params, batch, info={"variant": "mine-v3"}))

def test_no_info(gradcheck):
    cell, params, batch = case(GRU, 0)
    result = gradcheck(Case(cell, params, batch, info=None))
    assert result.as_dict()["cell"]["test"].endswith("test_no_info")
''')
    reports = tmp_path / "reports"
    result = pytester.runpytest("-q", f"--gradcheck-report-dir={reports}")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*cell: variant=mine-v3*"])
    (report,) = reports.glob("*.html")
    assert "mine-v3" in report.read_text()
