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

import hashlib
import re
from pathlib import Path

import pytest

__all__ = ["GradcheckFixture"]

MARKER_ARGS = ("atol", "rtol", "oracles")


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
                    help="by default compare analytic with numeric only, without autodiff; "
                         "never localise (oracles a test chooses are still compared)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gradcheck(atol=None, rtol=None, oracles=None): options of the gradcheck "
                   "fixture for this test")
    _validate_options(config)


def _validate_options(config):
    """Refuse bad --gradcheck-* values before collection, by the library's own rules."""
    for name in ("atol", "rtol"):
        value = config.getoption(f"--gradcheck-{name}")
        if value is None:
            continue
        from gradcheck.tolerance import resolve_tolerance
        try:
            resolve_tolerance(**{name: value})
        except ValueError as exc:
            reason = str(exc)
            if reason.startswith(f"{name}="):      # "atol=-1.0 must be ..."
                raise pytest.UsageError(f"--gradcheck-{reason}") from None
            raise pytest.UsageError(f"--gradcheck-{name}={value!r}: {reason}") from None
    seed = config.getoption("--gradcheck-seed")
    if seed is not None and not 0 <= seed < 2 ** 63:
        raise pytest.UsageError(f"--gradcheck-seed={seed} must be between 0 and 2**63 - 1")


def _marker_options(node) -> dict:
    """The gradcheck marker's keyword arguments; fail the test on any other argument."""
    marker = node.get_closest_marker("gradcheck")
    if marker is None:
        return {}
    accepted = ", ".join(MARKER_ARGS)
    if marker.args:
        given = ", ".join(repr(a) for a in marker.args)
        pytest.fail(f"{node.nodeid}: @pytest.mark.gradcheck takes keyword arguments only "
                    f"({accepted}), got positional {given}", pytrace=False)
    unknown = [k for k in marker.kwargs if k not in MARKER_ARGS]
    if unknown:
        given = ", ".join(f"{k}={marker.kwargs[k]!r}" for k in unknown)
        noun = "argument" if len(unknown) == 1 else "arguments"
        pytest.fail(f"{node.nodeid}: @pytest.mark.gradcheck got unknown {noun} {given}; "
                    f"it accepts {accepted}", pytrace=False)
    return dict(marker.kwargs)


def _report_name(nodeid: str) -> str:
    """A file name for ``nodeid``: readable, unique per node id, the same on every run."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:100]
    return f"{readable}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}"


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
        self._marked = _marker_options(request.node)
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

        cell: a cell, or a gradcheck.Case (then params, batch, symbolic, seed and
            oracles come from it, unless given here).
        params: the parameters; batch: the data.
        symbolic: the autodiff oracle, if any.
        oracles: which oracles to compare.  The first given of: this argument, the
            marker's ``oracles``, the Case's ``oracles``; when none is given, all
            available, or analytic and numeric alone with --gradcheck-fast.
            --gradcheck-fast changes only that default: oracles chosen explicitly
            are compared as chosen, autodiff included.
        atol, rtol: tolerances; by default the marker's, then the command line's.
        seed: recorded in the result, and seeds the check's own draws (sampled
            elements, localisation directions); by default the Case's seed when
            the Case has one, else this fixture's seed (--gradcheck-seed, 0).
        With --gradcheck-fast nothing is localised, whichever oracles are compared.
        Returns the CheckResult when it passes.
        """
        from gradcheck.check import check_gradients
        from gradcheck.user_cells import Case, cell_name

        if oracles is None:
            oracles = self._marked.get("oracles")
        info = {}
        if isinstance(cell, Case):
            case = cell
            info = dict(case.info or {})
            cell, params, batch = case.cell, case.params, case.batch
            symbolic = symbolic if symbolic is not None else case.symbolic
            seed = seed if seed is not None else case.seed
            oracles = oracles if oracles is not None else case.oracles
        if params is None or batch is None:
            raise TypeError("gradcheck(cell, params, batch) needs params and batch (or a Case)")
        if oracles is None and self.fast:       # fast changes the default only
            oracles = "analytic,numeric"
        result = check_gradients(
            cell, params, batch, symbolic=symbolic, oracles=oracles,
            atol=self._option("atol", atol), rtol=self._option("rtol", rtol),
            seed=self.seed if seed is None else seed, localise=not self.fast,
            cell_info={"name": cell_name(cell), **info, "test": self._request.node.nodeid})
        self.results.append(result)
        if result.passed:
            return result
        message = [f"gradcheck: {result.summary()}"]
        if info:                                # the Case's description of its cell
            message.append("cell: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        if result.localisation is not None:
            message.append(f"where: {result.localisation.sentence()}")
        message.append(f"seed: {result.seed}")
        try:
            from reports import write_report
            folder = _report_dir(self._request)
            name = _report_name(self._request.node.nodeid)
            path = write_report(result.as_dict(), folder / f"{name}-{len(self.results)}.html")
            message.append(f"report: {path}")
        except Exception as exc:   # the verdict matters more than the report
            message.append(f"report: not written ({type(exc).__name__}: {exc})")
        pytest.fail("\n".join(message), pytrace=False)


@pytest.fixture
def gradcheck(request):
    """Check a cell's gradients: ``gradcheck(cell, params, batch)`` fails the test on a mismatch."""
    return GradcheckFixture(request)
