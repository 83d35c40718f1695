"""pytest plugin: check a cell's gradients in one line of a test.

Registered through the ``pytest11`` entry point ``gradcheck``, so installing the
package is enough::

    def test_my_gru(gradcheck):
        gradcheck(cell, params, batch)                 # or gradcheck(case)

    @pytest.mark.gradcheck(atol=1e-8, oracles="analytic,numeric")
    def test_tight(gradcheck): ...

On failure the test fails with the summary (parameter, gate block, element and
both values), the localisation sentence and the seed, and an HTML report is
written; its path is in the message.  Options, all prefixed ``--gradcheck-``,
are listed by ``pytest --help``.  The checking itself lives in
:mod:`gradcheck.check`; this module only wires it into pytest, and imports it
lazily.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

__all__ = ["GradcheckFixture"]


def pytest_addoption(parser):
    group = parser.getgroup("gradcheck", "gradient checks of recurrent cells (gradcheck)")
    group.addoption("--gradcheck-report-dir", metavar="DIR", default=None,
                    help="write the HTML report of every failing check here "
                         "(default: a gradcheck-reports folder in pytest's temporary directory)")
    group.addoption("--gradcheck-seed", metavar="S", type=int, default=None,
                    help="the seed the gradcheck fixture hands to tests (fixture.seed; default 0)")
    group.addoption("--gradcheck-atol", metavar="X", type=float, default=None,
                    help="absolute tolerance of every check (default per dtype: 1e-6 for float64)")
    group.addoption("--gradcheck-rtol", metavar="X", type=float, default=None,
                    help="relative tolerance of every check (default per dtype: 1e-5 for float64)")
    group.addoption("--gradcheck-fast", action="store_true", default=False,
                    help="compare analytic with numeric only, without autodiff and localisation")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gradcheck(atol=None, rtol=None, oracles=None): options of the gradcheck "
                   "fixture for this test")


def _report_dir(request) -> Path:
    given = request.config.getoption("--gradcheck-report-dir")
    if given:
        return Path(given)
    return request.getfixturevalue("tmp_path_factory").getbasetemp() / "gradcheck-reports"


class GradcheckFixture:
    """The ``gradcheck`` fixture: call it with a cell, parameters and a batch (or a Case)."""

    def __init__(self, request):
        self._request = request
        config = request.config
        marker = request.node.get_closest_marker("gradcheck")
        self._marked = dict(marker.kwargs) if marker else {}
        seed = config.getoption("--gradcheck-seed")
        self.seed = 0 if seed is None else seed
        self.fast = config.getoption("--gradcheck-fast")
        self.results = []

    def _option(self, name, given):
        if given is not None:
            return given
        if name in self._marked:
            return self._marked[name]
        return self._request.config.getoption(f"--gradcheck-{name}")

    def __call__(self, cell, params=None, batch=None, *, symbolic=None, oracles=None,
                 atol=None, rtol=None, seed=None):
        """Check ``cell`` at ``params`` on ``batch``; fail the test on a mismatch.

        cell: a cell, or a gradcheck.Case (then params, batch, symbolic come from it).
        params: the parameters; batch: the data.
        symbolic: the autodiff oracle, if any.
        oracles: which oracles to compare; by default all available (analytic and
            numeric with --gradcheck-fast).
        atol, rtol: tolerances; by default the marker's, then the command line's.
        seed: recorded in the result; by default this fixture's seed.
        Returns the CheckResult when it passes.
        """
        from gradcheck.check import check_gradients
        from gradcheck.user_cells import Case

        if isinstance(cell, Case):
            case = cell
            cell, params, batch = case.cell, case.params, case.batch
            symbolic = symbolic if symbolic is not None else case.symbolic
            seed = seed if seed is not None else case.seed
        if params is None or batch is None:
            raise TypeError("gradcheck(cell, params, batch) needs params and batch (or a Case)")
        oracles = oracles if oracles is not None else self._marked.get("oracles")
        if self.fast:
            oracles, symbolic = "analytic,numeric", None
        result = check_gradients(
            cell, params, batch, symbolic=symbolic, oracles=oracles,
            atol=self._option("atol", atol), rtol=self._option("rtol", rtol),
            seed=self.seed if seed is None else seed, localise=not self.fast,
            cell_info={"name": getattr(cell, "name", type(cell).__name__),
                       "test": self._request.node.nodeid})
        self.results.append(result)
        if result.passed:
            return result
        message = [f"gradcheck: {result.summary()}"]
        if result.localisation is not None:
            message.append(f"where: {result.localisation.sentence()}")
        message.append(f"seed: {result.seed}")
        try:
            from reports import write_report
            folder = _report_dir(self._request)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self._request.node.nodeid).strip("_")
            path = write_report(result.as_dict(), folder / f"{name}-{len(self.results)}.html")
            message.append(f"report: {path}")
        except Exception as exc:   # the verdict matters more than the report
            message.append(f"report: not written ({type(exc).__name__}: {exc})")
        pytest.fail("\n".join(message), pytrace=False)


@pytest.fixture
def gradcheck(request):
    """Check a cell's gradients: ``gradcheck(cell, params, batch)`` fails the test on a mismatch."""
    return GradcheckFixture(request)
