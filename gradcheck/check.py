"""Run the oracles on one cell and compare every pair.

The oracles:

- ``analytic``: the cell's hand-written backward pass, ``cell.gradient(params, batch)``;
- ``numeric``: central finite differences of ``cell.loss(params, batch)``, or,
  for a cell with truncated BPTT, of the surrogate loss whose exact gradient
  the truncated gradient is (see :mod:`gradcheck.truncation`);
- ``autodiff``: the symbolic cell's gradient, ``symbolic.gradient(params, batch)``.

With three oracles, a parameter on which exactly the two pairs that involve
one oracle fail, while the third pair agrees, names that oracle the odd one out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from gradcheck.batch import validate_mask
from gradcheck.compare import Comparison, _json_float, compare_gradients
from gradcheck.directional import directional_check
from gradcheck.finite_differences import (ComplexStepError, batched_central_differences,
                                          complex_step_disagreement, complex_step_refusal,
                                          numeric_gradient, step_size_curve,
                                          vectorised_losses)
from gradcheck.localise import DetailsMismatch, Localisation, StepInterfaceMismatch
from gradcheck.localise import localise as localise_errors
from gradcheck.params import validate_params
from gradcheck.sparse_rows import (EMBEDDING_SAMPLE, ROW_SAMPLE_STREAM, plan_sparse_rows,
                                   probe_unused_rows, sample_mask, validate_embedding_sample)
from gradcheck.tolerance import Tolerance, agree, resolve_tolerance, same_loss
from gradcheck.truncation import FULL, Truncation, surrogate_loss
from gradcheck.user_cells import UserCodeError, check_gradient_dtypes

__all__ = ["ORACLES", "CellError", "CheckCannotFail", "CheckResult", "check_gradients", "diagnose_truncation", "odd_one_out",
           "parse_oracles", "json_ready"]

ORACLES = ("analytic", "numeric", "autodiff")
# NumPy and symbolic forward passes compute the same function to rounding
FORWARD_TOLERANCE = Tolerance(atol=1e-12, rtol=1e-9)


def parse_oracles(oracles) -> tuple[str, ...]:
    """Validate a comma-separated string or sequence of oracle names (at least two)."""
    if isinstance(oracles, str):
        names = [o.strip() for o in oracles.split(",")]
        if "" in names:
            raise ValueError(f"oracles={oracles!r} has an empty name: a comma-separated list "
                             f"such as analytic,numeric")
        oracles = names
    oracles = tuple(oracles)
    unknown = [o for o in oracles if o not in ORACLES]
    if unknown:
        raise ValueError(f"unknown oracle {unknown[0]!r}: choose from {', '.join(ORACLES)}")
    if len(set(oracles)) != len(oracles):
        raise ValueError(f"oracles {','.join(oracles)} name one oracle twice")
    if len(oracles) < 2:
        raise ValueError(f"oracles={','.join(oracles) or 'none'}: at least two are needed to compare")
    return tuple(o for o in ORACLES if o in oracles)   # canonical order


def odd_one_out(passed: dict[tuple[str, str], bool]) -> str | None:
    """The oracle whose pairs, and only those, fail; None when there is no such oracle."""
    oracles = sorted({o for pair in passed for o in pair})
    if len(oracles) < 3:
        return None
    failing = {pair for pair, ok in passed.items() if not ok}
    for oracle in oracles:
        if failing == {pair for pair in passed if oracle in pair}:
            return oracle
    return None


@dataclass
class CheckResult:
    """Everything one check found; ``as_dict()`` is the JSON contract."""

    seed: int | None
    cell: dict
    oracles: tuple[str, ...]
    comparisons: list[Comparison]
    losses: dict[str, float]
    timings: dict[str, float]
    forward_ok: bool = True
    notes: list[str] = field(default_factory=list)
    command: str | None = None
    localisation: "Localisation | None" = None
    defects: list[str] = field(default_factory=list)
    interrupted: bool = False
    mode: str = "exact"
    directional: dict | None = None
    gradients: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    step_curve: dict | None = None
    blocks: dict[str, dict] = field(default_factory=dict)
    sparse_rows: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.forward_ok and not self.defects and not self.interrupted
                and all(c.passed for c in self.comparisons))

    @property
    def verdict(self) -> str:
        if self.interrupted:
            return "interrupted"
        return "pass" if self.passed else "fail"

    def parameters(self) -> list[str]:
        return list(dict.fromkeys(c.parameter for c in self.comparisons))

    def odd_one_out_by_parameter(self) -> dict[str, str | None]:
        """For each failing parameter, the odd oracle (or None when undecided)."""
        out = {}
        for name in self.parameters():
            comps = [c for c in self.comparisons if c.parameter == name]
            if all(c.passed for c in comps):
                continue
            out[name] = odd_one_out({c.oracles: c.passed for c in comps})
        return out

    def odd_one_out(self) -> str | None:
        """The one oracle that is odd on every failing parameter, if there is one."""
        odd = set(self.odd_one_out_by_parameter().values())
        return odd.pop() if len(odd) == 1 and None not in odd else None

    def worst_failure(self) -> Comparison | None:
        failing = [c for c in self.comparisons if not c.passed]
        return max(failing, key=lambda c: c.max_abs_error) if failing else None

    def summary(self) -> str:
        """One or two sentences: the verdict and, on failure, where."""
        if self.interrupted:
            bad = [c for c in self.comparisons if not c.passed]
            head = "interrupted: " + (f"so far a mismatch on {', '.join(dict.fromkeys(c.parameter for c in bad))}"
                                      if bad else "no mismatch so far")
            return "; ".join([head] + self.notes)
        if self.passed:
            text = self._pass_sentence()
            kinks = sum(c.kinks for c in self.comparisons)
            if kinks:
                text += f"; {kinks} element comparisons sit on a kink and were not judged"
            return "; ".join([text] + self.notes)
        parts = list(self.defects)
        if not self.forward_ok:
            parts.append("the NumPy and symbolic forward passes disagree "
                         f"(loss {self.losses.get('numpy')!r} against {self.losses.get('symbolic')!r}): "
                         "they compute different functions")
        by_param = self.odd_one_out_by_parameter()
        if by_param:
            bad = []
            for name, odd in by_param.items():
                blocks = {}
                for c in self.comparisons:
                    if c.parameter == name and not c.passed:
                        for blk, n in c.blocks_failed.items():
                            blocks[blk] = max(blocks.get(blk, 0), n)
                blk = [b for b, n in blocks.items() if n]
                bad.append(name + (f" (block{'s' if len(blk) > 1 else ''} {', '.join(blk)})"
                                   if blk else ""))
            odd = self.odd_one_out()
            if odd is not None:
                others = [o for o in self.oracles if o != odd]
                parts.append(f"{odd} is the odd one out: it disagrees with "
                             f"{' and '.join(others)}, which agree, on {', '.join(bad)}")
            else:
                parts.append(f"mismatch on {', '.join(bad)}")
            worst = self.worst_failure()
            parts.append(f"worst: {worst.describe_worst()}")
        return "fail: " + "; ".join(parts + self.notes)

    def _pass_sentence(self) -> str:
        """What agreed, as compared: the oracle pairs that were compared element by element,
        on how many parameters and elements (a sampled pair: of those it compared)."""
        all_pairs = list(combinations(self.oracles, 2))
        pairs = [p for p in all_pairs if any(c.oracles == p for c in self.comparisons)]
        if not pairs:
            return "pass: no parameter needed an element-by-element comparison"
        counts = []
        for pair in pairs:
            comps = [c for c in self.comparisons if c.oracles == pair]
            size = sum(int(np.prod(c.shape)) for c in comps)
            compared = sum(c.compared or int(np.prod(c.shape)) for c in comps)
            counts.append((pair, len(comps), size, compared))
        if len(pairs) == len(all_pairs) and len({c[1:] for c in counts}) == 1:
            _, n_params, size, compared = counts[0]
            who = ("the oracle pair" if len(pairs) == 1 else f"all {len(pairs)} oracle pairs") + \
                f" ({', '.join(self.oracles)}) agree{'s' if len(pairs) == 1 else ''}"
            return f"pass: {who} on {n_params} parameters ({_elements(size, compared)})"
        return "pass: " + "; ".join(
            f"{' ~ '.join(pair)} agree on {n_params} parameters ({_elements(size, compared)})"
            for pair, n_params, size, compared in counts)

    def as_dict(self) -> dict:
        """The result as JSON data; non-finite numbers as the strings "nan", "inf", "-inf"
        (JSON has no NaN: ``json.dumps`` would write a bare NaN that parsers refuse)."""
        return json_ready(self._fields())

    def _fields(self) -> dict:
        return {
            "verdict": self.verdict,
            "seed": self.seed,
            "command": self.command,
            "cell": self.cell,
            "oracles": list(self.oracles),
            "summary": self.summary(),
            "odd_one_out": self.odd_one_out(),
            "forward_agrees": self.forward_ok,
            "defects": self.defects,
            "mode": self.mode,
            "directional": self.directional,
            "losses": self.losses,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "notes": self.notes,
            "localisation": self.localisation.as_dict() if self.localisation else None,
            "versions": versions(),
            "comparisons": [c.as_dict() for c in self.comparisons],
            "blocks": self.blocks,
            "sparse_rows": [check.as_dict() for check in self.sparse_rows],
            "step_curve": self.step_curve,
            "gradients": {oracle: {name: np.asarray(g, dtype=np.float64).tolist()
                                   for name, g in grads.items()}
                          for oracle, grads in self.gradients.items()},
        }


def json_ready(value):
    """``value`` with every non-finite float, in its dicts and lists, as its string."""
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _elements(size: int, compared: int) -> str:
    """"168 elements", or "53 of 8168 elements" where a pair compared a sample."""
    return f"{size} elements" if compared >= size else f"{compared} of {size} elements"


def versions() -> dict[str, str]:
    """Versions of what produced a result: Python, NumPy, gradcheck, the symbolic backend."""
    import platform
    import sys

    import gradcheck

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "gradcheck": gradcheck.__version__}
    for name in ("pytensor", "theano"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def _loss_and_gradient(cell, params, batch):
    """One call where the cell's gradient is its ``loss_and_gradient``, else two."""
    if _gradient_method(cell) == "loss_and_gradient":
        loss, grads = cell.loss_and_gradient(params, batch)
        return _scalar_loss(loss, "loss_and_gradient()"), grads
    return _scalar_loss(cell.loss(params, batch), "loss()"), cell.gradient(params, batch)


def _gradient_method(cell) -> str:
    """Which method gives the cell's gradient: "loss_and_gradient" or "gradient".

    The most derived definition wins: a subclass of a reference cell that
    overrides ``gradient`` alone has its gradient checked, not the inherited
    ``loss_and_gradient``'s (which never calls it).  A cell defining both in
    the same class (or on the instance) is checked through ``loss_and_gradient``;
    whenever that is what the check runs, the cell's ``gradient``, wherever
    defined, must agree with it (``_second_gradient``).
    """
    level = _first_level(cell)
    return "loss_and_gradient" if "loss_and_gradient" in level else "gradient"


def _first_level(cell) -> set:
    """Which of gradient and loss_and_gradient the most derived level defining either
    (the instance, then the classes of its MRO) defines."""
    cell = getattr(cell, "_gradcheck_cell", cell)           # a GuardedCell's own cell
    for where in [vars(cell) if hasattr(cell, "__dict__") else {}] + [
            vars(k) for k in type(cell).__mro__]:
        found = {name for name in ("gradient", "loss_and_gradient")
                 if name in where and callable(getattr(cell, name, None))}
        if found:
            return found
    return set()


def _second_gradient(cell, params, batch, grads, specs, tolerances) -> list[str]:
    """Where the check runs loss_and_gradient, the sentences naming where the cell's
    ``gradient()`` gives another gradient (what a training loop calling it would get,
    unchecked otherwise), whether it is defined beside loss_and_gradient or in another
    class of the MRO (a base overriding gradient, a subclass adding loss_and_gradient).
    A ``gradient`` marked ``gradcheck_derived`` returns loss_and_gradient()'s by
    construction (the reference cells'): it is not run a second time."""
    if _gradient_method(cell) != "loss_and_gradient" or not callable(
            getattr(cell, "gradient", None)):
        return []
    if getattr(getattr(cell, "_gradcheck_cell", cell).gradient, "gradcheck_derived", False):
        return []
    try:
        other = cell.gradient(params, batch)
    except NotImplementedError:
        if "gradient" not in _first_level(cell):
            return []           # an abstract gradient() of a base class: nothing to call
        raise
    found = []
    for spec in specs:
        if spec.name not in other or spec.name not in grads:
            continue
        if np.shape(other[spec.name]) != np.shape(grads[spec.name]):
            found.append(f"gradient() gives {spec.name} of shape {np.shape(other[spec.name])}, "
                         f"loss_and_gradient() {np.shape(grads[spec.name])}")
            continue
        comp = compare_gradients(spec, ("loss_and_gradient()", "gradient()"), grads[spec.name],
                                 other[spec.name], tolerances[spec.name])
        if not comp.passed:
            found.append(f"gradient() and loss_and_gradient() give different gradients of "
                         f"{spec.name} (worst: {comp.describe_worst()}): the check ran "
                         "loss_and_gradient()")
    return found


def _arrays_of(batch) -> dict:
    """Copies of the arrays a batch holds (its attributes, or its items)."""
    items = vars(batch).items() if hasattr(batch, "__dict__") else (
        batch.items() if isinstance(batch, dict) else [])
    return {k: np.array(v, copy=True) for k, v in items if isinstance(v, np.ndarray)}


def _mutations(params, saved_params, batch, saved_batch, who) -> list[str]:
    """Say which inputs ``who`` changed in place, and put the parameters back."""
    found = []
    for name, before in saved_params.items():
        if not np.array_equal(params[name], before, equal_nan=True):
            found.append(f"{who} changed parameter {name} in place")
            params[name][...] = before
    now = _arrays_of(batch)
    for name, before in saved_batch.items():
        if name in now and not np.array_equal(now[name], before, equal_nan=True):
            found.append(f"{who} changed batch.{name} in place")
            getattr(batch, name)[...] = before
    return found


class CellError(ValueError):
    """A cell (or its symbolic twin) raised while an oracle ran it."""


class CheckCannotFail(ValueError):
    """The check could not have failed: every gradient lies within the tolerance of zero."""


def _timed(oracle, fn):
    """Run one oracle; an exception from the cell becomes a one-line CellError."""
    start = time.perf_counter()
    try:
        value = fn()
    except (KeyboardInterrupt, MemoryError, UserCodeError, CellError, ComplexStepError):
        raise                       # their one line names the call, or is gradcheck's own refusal
    except Exception as exc:
        raise CellError(f"the {oracle} oracle failed: the cell raised "
                        f"{type(exc).__name__}: {exc}") from exc
    return value, time.perf_counter() - start


def _scalar_loss(value, who: str, complex_ok: bool = False):
    """The loss as a float; a CellError when it is not one real number.

    complex_ok: the parameters were complex (the complex step): a complex number
        is then the loss, returned as a complex.
    """
    arr = np.asarray(value)
    if arr.size == 1 and complex_ok and np.issubdtype(arr.dtype, np.complexfloating):
        return complex(arr.reshape(()))
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.floating)
                             or np.issubdtype(arr.dtype, np.integer)):
        raise CellError(f"{who} returned {arr.dtype} of shape {arr.shape}, not a scalar loss")
    return float(arr.reshape(()))


def _validate_inputs(cell, specs, params, batch) -> None:
    """ValueError naming the first bad parameter or batch array (before any oracle runs)."""
    validate_params(specs, params)
    for name, value in params.items():
        bad = ~np.isfinite(np.asarray(value))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"parameter {name} holds {np.asarray(value)[where]} at {list(where)}: "
                             "gradients are checked at finite points only")
    arrays = _arrays_of(batch)
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError(f"batch.{name} holds NaN or Inf")
    mask = arrays.get("mask")
    if mask is not None and mask.ndim >= 1 and mask.shape[0] == 0:
        raise ValueError("the batch has no time steps (T = 0): there is nothing to check")
    if mask is not None and mask.ndim >= 1 and mask.size:
        # a mask that weighs steps (0.5) is refused for every cell, not only for those
        # whose check_inputs looks; its shape is the cell's to check (a cell may take a
        # batch-first x, or a (T, B, 1) mask): the values only, whatever the shape
        flat = mask.reshape(mask.shape[0], -1)
        validate_mask(flat, *flat.shape)
    if hasattr(cell, "check_inputs"):
        cell.check_inputs(params, batch)


def check_gradients(cell, params, batch, *, symbolic=None, oracles=None, atol=None,
                    rtol=None, seed=None, cell_info=None, localise: bool = True,
                    max_elements: int | None = None, mode: str = "exact",
                    numeric_method: str = "batched", directions: int = 2,
                    embedding_sample: int | None = EMBEDDING_SAMPLE) -> CheckResult:
    """Compare the gradients of ``cell`` at ``params`` on ``batch`` across oracles.

    cell: has ``param_specs()``, ``loss(params, batch)`` and ``gradient(params, batch)``.
    params: dict of named float arrays, matching ``cell.param_specs()``; the analytic
        oracle sees them in their own dtype, the numeric and autodiff ones in float64.
    batch: the inputs, targets and mask passed to the cell.
    symbolic: the autodiff oracle (``loss`` and ``gradient`` with the same signature).
    oracles: names to compare (at least two); all available ones by default.
    atol: absolute tolerance, a scalar or ``{dtype: value}``; per-dtype default.
    rtol: relative tolerance, a scalar or ``{dtype: value}``; per-dtype default.
    seed: the seed that produced params and batch, recorded in the result; it also
        seeds the sampled elements and localisation directions.
    cell_info: the cell's configuration, recorded in the result.
    localise: with analytic and numeric oracles, also localise errors to gate block and
        time step (see :mod:`gradcheck.localise`), when the cell exposes what that needs.
    max_elements: differentiate at most this many elements of each parameter numerically
        (a seeded sample; the others are compared between analytic and autodiff only);
        for an embedding checked sparsely, drawn from its used and sampled rows.
    mode: "exact" (every element) or "fast" (random directions per gate block first,
        then the exact check for the parameters whose directions fail only).
    numeric_method: "batched" (central differences, many probes per forward pass where
        the cell offers ``losses``), "central" (one probe at a time) or "complex"
        (complex step, exact to rounding; cells of analytic functions only).
    directions: random directions per parameter block in fast mode.
    embedding_sample: for a parameter read by row lookup (``ParamSpec.rows_indexed_by``,
        an embedding), how many of the rows the batch does not use to differentiate
        numerically (seeded); the used rows are differentiated in full, and the analytic
        and autodiff gradients must be exactly zero on every unused row (see
        :mod:`gradcheck.sparse_rows`).  None: every unused row differentiated too.

    A KeyboardInterrupt while the oracles run returns the partial result
    (``interrupted`` set) instead of raising.  Raises CheckCannotFail (a
    ValueError) when every parameter's gradient, in every oracle, is within the
    tolerance of zero: such a check passes whatever the analytic gradient is.
    """
    if oracles is None:
        oracles = ORACLES if symbolic is not None else ("analytic", "numeric")
    oracles = parse_oracles(oracles)
    if "autodiff" in oracles and symbolic is None:
        raise ValueError("the autodiff oracle needs a symbolic cell (symbolic=...)")
    if mode not in ("exact", "fast"):
        raise ValueError(f"mode={mode!r} is not one of exact, fast")
    if numeric_method not in ("batched", "central", "complex"):
        raise ValueError(f"numeric_method={numeric_method!r} is not one of batched, central, complex")
    validate_embedding_sample(embedding_sample)
    if getattr(cell, "gradient_is_autodiff", False) and ("analytic" in oracles or mode == "fast"):
        # compared with autodiff, such an "analytic" gradient is the same computation
        # twice: it would pass whatever it is, and outvote the numeric oracle
        raise ValueError("this cell's gradient is PyTensor's own, the autodiff oracle's, not a "
                         "hand-written BPTT: there is no analytic gradient to check (nor to "
                         "screen in fast mode); compare the numeric and autodiff oracles "
                         "(oracles numeric,autodiff)")
    if mode == "fast" and "analytic" not in oracles:
        raise ValueError("fast mode screens the analytic gradient: include the analytic oracle")
    if numeric_method == "complex" and "numeric" in oracles:
        reason = complex_step_refusal(cell)
        if reason:
            raise ValueError(reason)
    specs = cell.param_specs()
    _validate_inputs(cell, specs, params, batch)
    tolerances = {s.name: resolve_tolerance(np.asarray(params[s.name]).dtype, atol, rtol)
                  for s in specs}
    dtypes = {s.name: str(np.asarray(params[s.name]).dtype) for s in specs}
    params64 = {k: np.array(v, dtype=np.float64, order="C") for k, v in params.items()}
    native = {k: np.array(v) for k, v in params.items()}
    rng = np.random.default_rng(seed if seed is not None else 0)
    row_rng = np.random.default_rng([seed if seed is not None else 0, ROW_SAMPLE_STREAM])
    row_checks = {s.name: plan_sparse_rows(s, batch, embedding_sample, row_rng) for s in specs
                  if s.rows_indexed_by is not None}
    within = {s.name: row_checks[s.name].element_mask(s.shape) for s in specs
              if s.name in row_checks}
    sampled = {s.name: _sample(s, max_elements, rng, within.get(s.name)) for s in specs}
    capped = [name for name, mask in sampled.items() if mask is not within.get(name)]

    grads, losses, timings, kinks, defects, numeric_done = {}, {}, {}, {}, [], {}
    screen = None
    interrupted = False
    saved_params = {k: np.array(v, copy=True) for k, v in params64.items()}
    saved_batch = _arrays_of(batch)
    numeric_loss = _numeric_loss(cell, params64, batch)
    try:
        first_loss, _ = _timed("numeric", lambda: _scalar_loss(cell.loss(params64, batch),
                                                               "loss()"))
        if not np.isfinite(first_loss):
            raise CellError(f"loss() gave {first_loss!r} for the given parameters and data: "
                            "gradients are checked where the loss is finite")
        if "numeric" in oracles and getattr(cell, "truncation", FULL).kind != "full":
            # truncated, the numeric oracle differentiates a surrogate built from the step
            # interface; at the checked point it must be the loss itself
            surrogate, _ = _timed("numeric", lambda: float(numeric_loss(params64)))
            if not same_loss(surrogate, first_loss):
                defects.append(
                    f"the step interface and loss() compute different losses: the truncation "
                    f"surrogate built from step(), output() and readout_loss() gives "
                    f"{surrogate!r} where loss() gives {first_loss!r} at the same point, and "
                    "the numeric oracle differentiates the surrogate")
        if numeric_method == "complex" and "numeric" in oracles:
            # a cell may declare supports_complex_step and still not be complex-safe
            reason, _ = _timed("numeric", lambda: complex_step_disagreement(
                numeric_loss, params64, seed=seed if seed is not None else 0))
            if reason:
                raise ComplexStepError(reason)
        if "analytic" in oracles:
            (losses["numpy"], grads["analytic"]), timings["analytic"] = _timed(
                "analytic", lambda: _loss_and_gradient(cell, native, batch))
            defects += _mutations(native, saved_params, batch, saved_batch, "the analytic oracle")
            validate_params(specs, grads["analytic"], what="analytic gradient")
            check_gradient_dtypes(native, grads["analytic"], "the analytic gradient", exact=False)
            # the tolerance of the precision the gradient was computed in: a float32
            # parameter whose gradient comes back in float64 gets float64's
            for s in specs:
                wider = np.result_type(np.asarray(params[s.name]).dtype,
                                       np.asarray(grads["analytic"][s.name]).dtype)
                tolerances[s.name] = resolve_tolerance(wider, atol, rtol)
            second, _ = _timed("analytic", lambda: _second_gradient(
                cell, native, batch, grads["analytic"], specs, tolerances))
            defects += second
        again, _ = _timed("numeric", lambda: _scalar_loss(cell.loss(params64, batch), "loss()"))
        if not same_loss(again, first_loss):
            defects.append(
                f"the cell's loss is not a function of its inputs: loss() gave {first_loss!r}, "
                f"then {again!r} for the same parameters and data (does the backward pass write "
                "into a cached forward output, or does the loss draw random numbers?)")
        losses.setdefault("numpy", first_loss)
        if "autodiff" in oracles:
            (losses["symbolic"], grads["autodiff"]), timings["autodiff"] = _timed(
                "autodiff", lambda: _loss_and_gradient(symbolic, params64, batch))
            defects += _mutations(params64, saved_params, batch, saved_batch,
                                  "the autodiff oracle")
            validate_params(specs, grads["autodiff"], what="autodiff gradient")
        if "numeric" in oracles:
            names = None
            if mode == "fast":
                screen, timings["directional"] = _timed("numeric", lambda: directional_check(
                    cell, params64, batch, grads["analytic"], tolerances=tolerances,
                    directions=directions, seed=seed if seed is not None else 0,
                    method="complex" if numeric_method == "complex" else "central"))
                names = screen.fallback()   # only these get the element-by-element check
            _, timings["numeric"] = _timed("numeric", lambda: numeric_gradient(
                cell, params64, batch, names, method=numeric_method, elements=sampled,
                out=numeric_done, loss=numeric_loss))
            for check in row_checks.values():
                done = check.parameter in numeric_done and check.parameter not in capped
                check.direction, _ = _timed("numeric", lambda check=check, done=done:
                                            probe_unused_rows(check, numeric_loss, params64,
                                                              tolerances[check.parameter],
                                                              row_rng, differentiated=done))
    except KeyboardInterrupt:
        interrupted = True
    if numeric_done:
        grads["numeric"] = {k: v.value for k, v in numeric_done.items()}
        kinks = {k: v.kinks for k, v in numeric_done.items()}
    defects += _judge_sparse_rows(row_checks, grads, numeric_done, sampled, within, tolerances)

    forward_ok = True
    if "symbolic" in losses:
        forward_ok = bool(agree(losses["numpy"], losses["symbolic"],
                                _forward_tolerance(params.values())))

    comparisons = []
    for spec in specs:
        for a, b in combinations(oracles, 2):
            if spec.name not in grads.get(a, {}) or spec.name not in grads.get(b, {}):
                continue        # interrupted before this oracle reached this parameter
            numeric = "numeric" in (a, b)
            comparisons.append(compare_gradients(
                spec, (a, b), grads[a][spec.name], grads[b][spec.name], tolerances[spec.name],
                kinks.get(spec.name) if numeric else None,
                where=sampled[spec.name] if numeric else None, dtype=dtypes[spec.name]))
    result = CheckResult(seed=seed, cell=dict(cell_info or {}), oracles=oracles,
                         comparisons=comparisons, losses=losses, timings=timings,
                         forward_ok=forward_ok, gradients=grads, defects=defects,
                         blocks={s.name: {"names": list(s.blocks), "axis": s.block_axis}
                                 for s in specs if s.blocks},
                         interrupted=interrupted, mode=mode,
                         sparse_rows=list(row_checks.values()))
    if screen is not None:
        result.directional = screen.as_dict()
        said = screen.summary()             # "pass: ..." or "fail: ...", said as a note
        result.notes.append("the numeric oracle's " + said[len("pass: "):] if said.startswith("pass: ")
                            else "fast mode's directions, then element by element where they "
                            "failed: " + said[len("fail: "):])
    if interrupted:
        done = sorted({c.parameter for c in comparisons})
        result.notes.append(f"partial result: compared {len(done)} of "
                            f"{len(specs)} parameters ({', '.join(done) or 'none'})")
        return result
    if capped and "numeric" in oracles:
        rest = ("compared between analytic and autodiff only"
                if {"analytic", "autodiff"} <= set(oracles) else "not compared")
        result.notes.append(f"numeric oracle sampled: at most {max_elements} elements per "
                            f"parameter (seeded), the rest {rest}")
    result.notes += [check.note() for check in row_checks.values()]
    if any("numeric" in c.oracles for c in comparisons):
        result.step_curve = _step_curve(result, numeric_loss, params64, grads, cell, batch)
    mask = getattr(batch, "mask", None)
    result.notes += _zero_gradient_notes(specs, grads, np.shape(mask)[0] if np.ndim(mask) else None)
    result.notes += _cannot_fail(specs, grads, tolerances)
    if localise and {"analytic", "numeric"} <= set(oracles):
        try:
            result.localisation = localise_errors(cell, params64, batch, specs, tolerances,
                                                  seed=seed if seed is not None else 0,
                                                  analytic=grads["analytic"])
        except StepInterfaceMismatch as exc:
            result.notes.append(f"not localised by time step: {exc}")
        except DetailsMismatch as exc:
            # two gradients of the cell's own that disagree: where not every element was
            # compared, the numeric oracle decides on the elements where they differ
            total, compared = _analytic_coverage(result, specs)
            wrong = []
            if compared < total and exc.where:
                wrong = _judge_where_details_differ(cell, params64, batch, grads["analytic"],
                                                    exc.where, specs, tolerances,
                                                    numeric_method, numeric_loss)
            if wrong:
                result.defects.append(f"{exc}; there the numeric oracle sides with "
                                      f"gradient_details(): {wrong[0]}")
            else:
                result.notes.append(f"not localised by time step: {exc}")
        _judge_localisation(result, specs)
    truncation = getattr(cell, "truncation", FULL)
    analytic_vs_numeric = [c for c in comparisons if c.oracles == ("analytic", "numeric")]
    if truncation.kind != "full" and any(not c.passed for c in analytic_vs_numeric):
        note = diagnose_truncation(cell, params64, batch, truncation, grads["analytic"], tolerances,
                                   elements=sampled)
        if note:
            result.notes.append(note)
    if result.localisation is not None:
        # localisation sets the analytic gradient against the numeric oracle
        result.localisation.analytic_failed = any(not c.passed for c in analytic_vs_numeric)
    return result


def _judge_localisation(result, specs) -> None:
    """A localised error counts where the numeric oracle did not compare every element.

    Localisation compares every step and gate block along random directions;
    when it finds an error that the elements compared one by one did not show
    (some were sampled out, or fast mode judged them by directions), the check
    fails on it.  Where every element was compared and agrees, the per-step
    contributions disagree while their sum is right: a note, not a failure.
    """
    entry = result.localisation.entry() if result.localisation is not None else None
    if entry is None or not result.passed:
        return
    total, compared = _analytic_coverage(result, specs)
    if compared < total:
        result.defects.append(
            f"localisation finds an error that the {compared} of {total} elements compared "
            f"one by one with the analytic gradient did not show: "
            f"{result.localisation.sentence()}")
    else:
        result.notes.append("every element agrees, but localisation finds per-step "
                            "contributions that disagree (gradient_details() splits the "
                            f"gradient over the steps otherwise): {result.localisation.sentence()}")


def _forward_tolerance(values) -> Tolerance:
    """How close the NumPy and symbolic losses must be: FORWARD_TOLERANCE, or 100 eps of
    the narrowest parameter dtype where that is looser (a float32 cell's loss is
    float32's, while the symbolic twin computes in float64)."""
    dtypes = [np.asarray(v).dtype for v in values]
    eps = max((float(np.finfo(d).eps) for d in dtypes if np.issubdtype(d, np.floating)),
              default=0.0)
    return Tolerance(FORWARD_TOLERANCE.atol, max(FORWARD_TOLERANCE.rtol, 100 * eps))


def _judge_where_details_differ(cell, params64, batch, analytic, where, specs, tolerances,
                                method, loss) -> list[str]:
    """The analytic gradient against the numeric oracle on the elements ``where``
    (``{name: mask}``) gradient_details() disagrees with it; the worst disagreement of
    each parameter where they disagree."""
    numeric = numeric_gradient(cell, params64, batch, list(where), elements=where, loss=loss,
                               method="batched" if method == "complex" else method)
    found = []
    for spec in specs:
        if spec.name in where:
            comp = compare_gradients(spec, ("analytic", "numeric"), analytic[spec.name],
                                     numeric[spec.name].value, tolerances[spec.name],
                                     numeric[spec.name].kinks, where=where[spec.name])
            if not comp.passed:
                found.append(comp.describe_worst())
    return found


def _analytic_coverage(result, specs) -> tuple[int, int]:
    """(elements in all, elements compared one by one with the analytic gradient by a
    numeric or autodiff oracle): per parameter, the fuller of its comparisons."""
    compared = 0
    for s in specs:
        counts = [c.compared or int(np.prod(c.shape)) for c in result.comparisons
                  if c.parameter == s.name and "analytic" in c.oracles]
        compared += max(counts, default=0)
    return sum(s.size for s in specs), compared


def _numeric_loss(cell, params64, batch):
    """The loss the numeric oracle differentiates: the loss, or the truncation surrogate."""
    truncation = getattr(cell, "truncation", FULL)
    if truncation.kind == "full":
        return lambda p: _scalar_loss(cell.loss(p, batch), "loss()",
                                      complex_ok=any(np.iscomplexobj(v) for v in p.values()))
    return surrogate_loss(cell, params64, batch, truncation)


def _sample(spec, max_elements, rng, within=None):
    """A boolean mask of the elements to differentiate numerically, or None for all.

    spec: the parameter's ParamSpec.
    max_elements: at most this many elements (None: no limit).
    rng: the numpy Generator that draws them.
    within: the candidate elements (a boolean mask), or None for every element; it is
        returned as it is when it holds at most ``max_elements``.
    """
    count = spec.size if within is None else int(np.count_nonzero(within))
    if max_elements is None or count <= max_elements:
        return within
    candidates = np.ones(spec.shape, dtype=bool) if within is None else within
    return sample_mask(candidates, max_elements, rng)


def _judge_sparse_rows(row_checks, grads, numeric_done, sampled, within, tolerances) -> list[str]:
    """Judge the unused rows of every parameter checked sparsely; the violations' sentences.

    row_checks: ``{name: SparseRowCheck}``.
    grads: ``{oracle: {name: array}}``, the gradients the oracles gave.
    numeric_done: ``{name: NumericGradient}`` of the parameters differentiated numerically.
    sampled: ``{name: mask or None}``, the elements the numeric oracle differentiated.
    within: ``{name: mask or None}``, the used and sampled rows' elements.
    tolerances: ``{name: Tolerance}``.
    """
    found = []
    for name, check in row_checks.items():
        if name in numeric_done:
            mask = sampled[name]
            check.numeric_elements = int(numeric_done[name].value.size if mask is None
                                         else np.count_nonzero(mask))
            check.capped = mask is not within[name]
        check.judge(grads, numeric_done.get(name), tolerances[name], sampled[name])
        found += check.messages()
    return found


def _zero_gradient_notes(specs, grads, steps=None) -> list[str]:
    """Hints for gradients that are exactly zero: in every oracle, or in the analytic only.

    steps: the batch's number of time steps, when it has a mask to tell it.
    """
    notes = []
    silent = [s.name for s in specs if s.size and all(s.name in grads[o] for o in grads)
              and all(not np.any(np.nan_to_num(grads[o][s.name])) for o in grads)]
    if silent:
        why = ("one step only: a recurrent weight multiplies nothing but the zero initial "
               "state; " if steps == 1 else "")
        notes.append(
            f"the gradient of {', '.join(silent)} is exactly zero in every oracle: "
            f"{'it does' if len(silent) == 1 else 'they do'} not reach the loss here "
            f"({why}all steps masked, a disconnected parameter, or a forward bug such as a scan "
            "output indexed with [0], which 'gradcheck compare' finds in a Theano layer)")
    if "analytic" in grads:
        others = [o for o in grads if o != "analytic"]
        dead = [s.name for s in specs if s.size and not np.any(grads["analytic"][s.name])
                and any(np.any(np.nan_to_num(grads[o].get(s.name, 0.0))) for o in others)]
        if dead:
            notes.append(
                f"the analytic gradient of {', '.join(dead)} is exactly zero where "
                f"{' and '.join(others)} {'is' if len(others) == 1 else 'are'} not: a backward "
                "loop that never runs (an empty range?), or a gradient never accumulated")
    return notes


def _largest(grads, name) -> float:
    """The largest finite |element| of parameter ``name``'s gradient in any oracle."""
    return max((float(np.max(np.abs(np.nan_to_num(g[name], posinf=0.0, neginf=0.0)),
                             initial=0.0)) for g in grads.values() if name in g), default=0.0)


def _cannot_fail(specs, grads, tolerances) -> list[str]:
    """Notes on parameters whose comparisons cannot fail; CheckCannotFail when none can.

    A zero gradient agrees with b wherever |b| <= atol / (1 - rtol)
    (``Tolerance.zero_bound``); when every oracle's gradient of a parameter lies
    within that bound, an analytic gradient of zero would pass there.  Parameters
    that are exactly zero everywhere have their own note (``_zero_gradient_notes``).
    """
    largest = {s.name: _largest(grads, s.name) for s in specs if s.size}
    weak = [n for n, g in largest.items() if g <= tolerances[n].zero_bound]
    if largest and len(weak) == len(largest):
        if not any(largest.values()):
            raise CheckCannotFail(
                "every gradient is exactly zero in every oracle: nothing reaches the loss "
                "(every step masked, or a loss that does not depend on the parameters), so "
                "the check could not fail")
        top = max(largest, key=largest.get)
        tol = tolerances[top]
        raise CheckCannotFail(
            f"the tolerance (atol={tol.atol:g}, rtol={tol.rtol:g}) lets a zero gradient pass "
            f"on every parameter: the largest gradient element is {largest[top]:.3g} (in {top}), "
            f"within atol / (1 - rtol) = {tol.zero_bound:.3g}, so the check could not fail; "
            f"choose a smaller {'rtol' if tol.rtol >= 0.5 else 'atol'}")
    shown = [n for n in weak if largest[n] > 0]     # exactly zero ones have their own note
    if not shown:
        return []
    return [f"a zero gradient would pass on {', '.join(shown)}: every element there is within "
            "the tolerance's atol / (1 - rtol) of 0, so these comparisons cannot fail"]


def diagnose_truncation(cell, params, batch, truncation, analytic, tolerances,
                        elements=None) -> str | None:
    """When a truncated analytic gradient fails, find the truncation it does match.

    Tries k - 1, k + 1, the other semantics at k, and full BPTT, each against the
    finite differences of its own surrogate.

    cell: the cell, with the step interface the surrogates need.
    params: the point of evaluation, float64.
    batch: the batch.
    truncation: the truncation the cell claims.
    analytic: its analytic gradient, ``{name: array}``.
    tolerances: ``{name: Tolerance}``.
    elements: ``{name: boolean mask or None}``: differentiate and compare only these
        elements (the check's sample); None: every element.
    """
    kind, k = truncation.kind, truncation.k
    other = "tail" if kind == "window" else "window"
    candidates = ([Truncation(kind, k - 1)] if k > 1 else []) + [
        Truncation(kind, k + 1), Truncation(other, k), FULL]
    for alt in candidates:
        # vectorised where the surrogate has its own losses (the same numbers as one at a time)
        surrogate = surrogate_loss(cell, params, batch, alt)
        numeric = batched_central_differences(cell, params, batch, loss=surrogate,
                                              losses=getattr(surrogate, "losses", None),
                                              elements=elements)
        if all((agree(analytic[name], numeric[name].value, tolerances[name])
                | ~_chosen(elements, name, numeric[name].value.shape)).all()
               for name in analytic):
            return (f"the analytic gradient matches {alt.describe()} instead of "
                    f"{truncation.describe()}: the hand BPTT's truncation is off")
    return None


def _chosen(elements, name, shape) -> np.ndarray:
    """The elements of ``name`` that ``elements`` marks (every one when it marks none)."""
    mask = (elements or {}).get(name)
    return np.ones(shape, dtype=bool) if mask is None else mask


def _step_curve(result, loss, params, grads, cell, batch):
    """The finite-difference error against step size, at the worst element (its losses
    in one vectorised pass where the numeric oracle's may run so)."""
    pairs = [c for c in result.comparisons if "numeric" in c.oracles]
    # the worst element of the worst failing pair with numeric, else of the worst pair
    chosen = max(pairs, key=lambda c: (not c.passed, c.max_abs_error))
    reference = next(o for o in ("autodiff", "analytic") if o in grads)
    index = chosen.worst_index
    return step_size_curve(loss, params, chosen.parameter, index,
                           grads[reference][chosen.parameter][index], cell=cell,
                           losses=vectorised_losses(cell, params, batch, loss)) | {
                               "reference_oracle": reference}
