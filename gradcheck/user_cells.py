"""Bring your own cell.

The harness needs three things from a cell, and nothing else:

- ``param_specs()``: a list of :class:`gradcheck.ParamSpec` (name, shape, and
  optionally gate blocks and layer);
- ``loss(params, batch)``: the scalar loss at a dict of named float arrays;
- ``gradient(params, batch)``: the hand-written gradient, a dict with the same
  names and shapes.

Any object with these is a cell (see ``cells/gru.py`` for a complete one that
also offers the step interface used for truncation and localisation).  For
the rest, this module builds cells from what people already have:

- :func:`function_cell`: two plain functions, ``loss(params, batch)`` and
  ``gradient(params, batch)``, and the parameters;
- :func:`model_cell`: a model object in the style of the seed blog and the
  NumPy RNN tutorials it follows: parameters as attributes (``E``, ``U``,
  ``V``, ``W``, ``b``, ``c``), ``forward_propagation(x)`` and ``bptt(x, y)``
  returning a list of gradient arrays in that order.

A :class:`Case` bundles a cell with the parameters and batch to check it at,
and, optionally, a symbolic twin for the autodiff oracle.

User code may do what no cell should: exit.  Every call into it runs under
:class:`user_code`, which turns a ``SystemExit`` (or another BaseException that
is not an Exception) into a one-line :class:`UserCodeError` naming the call;
:class:`FunctionCell` and :class:`ModelCell` guard the user's functions and
methods themselves, :class:`GuardedCell` guards any other cell's methods.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradcheck.batch import Batch
from gradcheck.params import ParamSpec

__all__ = ["Case", "FunctionCell", "function_cell", "ModelCell", "model_cell",
           "MODEL_PARAM_NAMES", "UserCodeError", "user_code", "GuardedCell", "guard_case",
           "check_gradient_dtypes", "cell_name"]

# the order in which the blog's bptt returns its gradients
MODEL_PARAM_NAMES = ("E", "U", "V", "W", "b", "c")


class UserCodeError(ValueError):
    """The user's file or cell cannot be used; the message says why, in one line."""


# what user code raises that keeps its meaning: errors reach the oracles' reports,
# Ctrl-C interrupts, generators close
_PASSED_ON = (Exception, KeyboardInterrupt, GeneratorExit)
_GRADCHECK_DIR = os.path.dirname(os.path.realpath(__file__))


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """The standard library's and site-packages' directories (found when first needed:
    sysconfig's paths cost a command's start ~1 ms)."""
    import sysconfig
    return tuple({os.path.realpath(path) for key, path in sysconfig.get_paths().items()
                  if key in ("stdlib", "platstdlib", "purelib", "platlib")})


class user_code:
    """A context manager around calls into user code that must not end the process.

    A SystemExit (``sys.exit``, ``exit()``, argparse's ``parse_args``), or any other
    BaseException that is neither an Exception, a KeyboardInterrupt nor a
    GeneratorExit, leaves the block as a one-line :class:`UserCodeError`:
    ``gradient() raised SystemExit(0) at my_cell.py:12: ...``.  Anything else passes
    unchanged.  It keeps no state, so one instance may guard any number of calls.

    what: the call, as the message names it (``"gradient()"``, ``"importing cell.py"``),
        or a function of no arguments returning it (called only on an exit).
    importing: the call imports a file (the advice is then about ``__main__``).
    """

    __slots__ = ("what", "importing")

    def __init__(self, what, importing: bool = False):
        self.what, self.importing = what, importing

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or issubclass(kind, _PASSED_ON):
            return False
        what = self.what() if callable(self.what) else self.what
        raise UserCodeError(_exit_message(what, exc, tb, self.importing)) from None


def _exit_message(what: str, exc: BaseException, tb, importing: bool) -> str:
    """One line: what raised which BaseException, where in the user's code, and what to do."""
    text = f"{what} raised {exc!r}"
    where = _user_line(tb)
    if where:
        text += f" at {where}"
    if _passes_through(tb, "argparse"):
        text += " in argparse (whose message is above)"
    if not isinstance(exc, SystemExit):
        advice = (f"{type(exc).__name__} derives from BaseException, not Exception: "
                  "raise an Exception instead")
    elif importing:
        advice = ('run the file\'s script part (sys.exit, argparse) under '
                  'if __name__ == "__main__":')
    else:
        advice = "gradcheck calls this code: return, or raise an exception, instead of exiting"
    return f"{text}: {advice}"


def _is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's: not gradcheck's, Python's or an installed package's."""
    if filename.startswith("<"):
        return False
    path = os.path.realpath(filename)
    return not any(path == d or path.startswith(d + os.sep)
                   for d in (_GRADCHECK_DIR,) + _library_dirs())


def _user_line(tb) -> str | None:
    """``file.py:LINE`` of the deepest frame of traceback ``tb`` in the user's code."""
    where = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if _is_user_file(filename):
            where = f"{Path(filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _passes_through(tb, module: str) -> bool:
    """Whether traceback ``tb`` runs through the module named ``module``."""
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == module:
            return True
        tb = tb.tb_next
    return False


def _guarded(fn, guard: user_code):
    """``fn``, each of its calls run under ``guard``."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with guard:
            return fn(*args, **kwargs)
    return call


def _call_name(fn, role: str) -> str:
    """How messages name the user's function ``fn``: ``gradient()``, or by its role."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str) or "<lambda>" in name:
        return f"the {role} function"
    return f"{name}()"


def _described(value) -> str:
    """What a value is, for messages: ``a dict with keys 'E', 'U'``, ``None``, ``a list of 5``."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"a NumPy array of shape {value.shape}"
    kind = type(value).__name__
    article = "an" if kind[0].lower() in "aeiou" else "a"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:6])
        return f"{article} {kind} with keys {keys}" if keys else f"an empty {kind}"
    if isinstance(value, (list, tuple)):
        return f"{article} {kind} of {len(value)}"
    return f"{article} {kind}"


def check_gradient_dtypes(params, grads, who: str, *, exact: bool = True) -> None:
    """Raise ValueError when a float gradient's dtype is not its float parameter's.

    params: ``{name: array}``, the point the gradient was taken at.
    grads: ``{name: array}``, the gradient ``who`` returned.
    who: the function that returned it, for the message.
    exact: refuse any other float dtype; False refuses only a dtype that cannot hold
        the parameter's values (float32 for float64), and lets a cell compute a
        float32 parameter's gradient in float64.

    Names in only one of the two, and non-float arrays, are left to
    :func:`gradcheck.params.validate_params`, which names them.
    """
    for name, grad in grads.items():
        if name not in params:
            continue
        want, got = np.asarray(params[name]).dtype, np.asarray(grad).dtype
        if not (np.issubdtype(got, np.floating) and np.issubdtype(want, np.floating)):
            continue
        if got != want and (exact or not np.can_cast(want, got, "safe")):
            raise ValueError(
                f"{who} returned the gradient of {name} as {got}, but parameter {name} is "
                f"{want}: return each gradient in its parameter's dtype")


@dataclass
class Case:
    """What one check needs: a cell, the point and the data, optionally a symbolic twin.

    cell: the cell under test (``param_specs``, ``loss``, ``gradient``).
    params: dict of named float arrays.
    batch: whatever the cell's ``loss`` and ``gradient`` take as their second argument.
    symbolic: the autodiff oracle, with ``loss`` and ``gradient`` like the cell's, or None.
    seed: the seed the case was drawn with, if any; when given, the check's seed
        (recorded in the result; it seeds the sampled elements and localisation
        directions) in ``gradcheck check`` and the pytest fixture.
    info: a description of the cell for the result (name, sizes).
    oracles: the oracles to compare when the caller names none (``gradcheck check
        --oracles``; the pytest fixture's ``oracles=`` argument or marker); None:
        all the case has (analytic and numeric, and autodiff with ``symbolic``).
    """

    cell: object
    params: dict
    batch: object
    symbolic: object = None
    seed: int | None = None
    info: dict = field(default_factory=dict)
    oracles: tuple | None = None


def _specs_from_params(params, blocks=None) -> list[ParamSpec]:
    blocks = blocks or {}
    specs = []
    for name, value in params.items():
        spec_blocks = blocks.get(name)
        if spec_blocks is None:
            specs.append(ParamSpec(name, np.shape(value)))
        else:
            names, axis = spec_blocks
            specs.append(ParamSpec(name, np.shape(value), tuple(names), axis))
    return specs


class FunctionCell:
    """A cell made of two functions: ``loss(params, batch)`` and ``gradient(params, batch)``."""

    def __init__(self, loss, gradient, specs: list[ParamSpec], name: str = "cell"):
        self._loss, self._gradient, self._specs, self.name = loss, gradient, specs, name
        self._gradient_name = _call_name(gradient, "gradient")
        self._loss_guard = user_code(_call_name(loss, "loss"))
        self._gradient_guard = user_code(self._gradient_name)

    def param_specs(self) -> list[ParamSpec]:
        return list(self._specs)

    def loss(self, params, batch):
        with self._loss_guard:
            return self._loss(params, batch)    # the harness checks that it is a scalar

    def gradient(self, params, batch) -> dict:
        with self._gradient_guard:
            grads = self._gradient(params, batch)
        if not isinstance(grads, Mapping):
            example = self._specs[0].name if self._specs else "W"
            raise TypeError(
                f"{self._gradient_name} must return a dict name -> array, like "
                f"{{{example!r}: dL/d{example}}}; it returned {_described(grads)}")
        grads = dict(grads)
        check_gradient_dtypes(params, grads, self._gradient_name)
        return grads


def function_cell(*, loss, gradient, params, blocks=None, name="cell") -> FunctionCell:
    """A cell from two functions.

    loss: ``loss(params, batch) -> float``.
    gradient: ``gradient(params, batch) -> {name: array}``, the hand-written backward pass.
    params: example parameters ``{name: array}``; their names and shapes become the specs.
    blocks: ``{name: (block names, axis)}`` for parameters holding gate blocks.
    name: the cell's name in results and reports.
    """
    return FunctionCell(loss, gradient, _specs_from_params(params, blocks), name)


class ModelCell:
    """A blog-style model object seen as a cell.

    The model keeps its parameters as attributes and computes with them, so
    ``loss`` and ``gradient`` set the attributes to the arrays they are given,
    call the model, and put the model's own arrays back.  The batch is a
    :class:`Batch` of one sequence: ``x`` and ``y`` are ``(T, 1)`` token ids.
    """

    def __init__(self, model, names, blocks=None, name=None):
        self.model = model
        self.names = tuple(names)
        self.name = name or type(model).__name__
        self._specs = _specs_from_params({n: getattr(model, n) for n in self.names}, blocks)
        self._guards = {method: user_code(f"{self.name}.{method}()") for method in
                        ("calculate_total_loss", "forward_propagation", "bptt")}

    def param_specs(self) -> list[ParamSpec]:
        return list(self._specs)

    def _with(self, params, fn):
        saved = {n: getattr(self.model, n) for n in self.names}
        try:
            for n in self.names:
                setattr(self.model, n, params[n])
            return fn()
        finally:
            for n, v in saved.items():
                setattr(self.model, n, v)

    @staticmethod
    def _sequence(batch: Batch):
        x = np.asarray(batch.x).reshape(-1)
        y = np.asarray(batch.y).reshape(-1)
        return x, y

    def loss(self, params, batch) -> float:
        x, y = self._sequence(batch)

        def total():
            if hasattr(self.model, "calculate_total_loss"):
                with self._guards["calculate_total_loss"]:
                    return float(self.model.calculate_total_loss([x], [y]))
            with self._guards["forward_propagation"]:
                out = self.model.forward_propagation(x)
            o = out[0] if isinstance(out, (tuple, list)) else out
            o = np.asarray(o, dtype=np.float64).reshape(len(x), -1)
            # L = -sum_t log o_t[y_t], the loss whose gradient the blog's bptt computes
            return float(-np.log(o[np.arange(len(y)), y]).sum())
        return self._with(params, total)

    def gradient(self, params, batch) -> dict:
        x, y = self._sequence(batch)
        with self._guards["bptt"]:
            grads = self._with(params, lambda: self.model.bptt(x, y))
        if not isinstance(grads, (list, tuple)):
            raise TypeError(
                f"{self.name}.bptt(x, y) must return a list of the gradients of "
                f"{', '.join(self.names)}, in that order (or set gradcheck_params on the "
                f"model to the order it uses); it returned {_described(grads)}")
        if len(grads) != len(self.names):
            raise ValueError(
                f"{self.name}.bptt returned {len(grads)} arrays for the {len(self.names)} "
                f"parameters {', '.join(self.names)}: set gradcheck_params on the model to "
                "name them in the order bptt returns them")
        grads = {n: np.asarray(g) for n, g in zip(self.names, grads)}
        check_gradient_dtypes(params, grads, f"{self.name}.bptt(x, y)")
        return grads


def _model_vocab(model, names) -> int:
    for attr in ("word_dim", "vocab_size", "vocab"):
        value = getattr(model, attr, None)
        if isinstance(value, (int, np.integer)) and value > 0:
            return int(value)
    if "E" in names:                       # the blog: E is (hidden, vocab), x = E[:, word]
        return int(np.shape(model.E)[-1])
    if "V" in names:                       # the tutorials: V is (vocab, hidden)
        return int(np.shape(model.V)[0])
    raise ValueError("cannot tell the model's vocabulary size: give it a word_dim attribute")


def model_cell(model, *, steps: int, seed: int, names=None, blocks=None) -> Case:
    """A :class:`Case` for a blog-style model: random token ids and targets of length ``steps``.

    model: has parameter attributes, ``forward_propagation(x)`` and ``bptt(x, y)``.
    steps: the sequence length T.
    seed: seeds the drawn sequence.
    names: the parameters in the order ``bptt`` returns their gradients; by default
        ``model.gradcheck_params``, else those of E, U, V, W, b, c the model has.
    blocks: ``{name: (block names, axis)}``; by default ``model.gradcheck_blocks``.
    """
    for method in ("forward_propagation", "bptt"):
        if not callable(getattr(model, method, None)):
            raise ValueError(f"{type(model).__name__} has no {method} method")
    if names is None:
        names = getattr(model, "gradcheck_params", None) or [
            n for n in MODEL_PARAM_NAMES if isinstance(getattr(model, n, None), np.ndarray)]
    if not names:
        raise ValueError(f"{type(model).__name__} has none of the parameters "
                         f"{', '.join(MODEL_PARAM_NAMES)}: set gradcheck_params")
    for n in names:
        value = getattr(model, n, None)
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{type(model).__name__}.{n} is not a float array")
    k = getattr(model, "bptt_truncate", None)
    if isinstance(k, (int, np.integer)) and k >= 0 and steps > k + 1:
        raise ValueError(
            f"{type(model).__name__}.bptt_truncate = {k} truncates BPTT, and a model class "
            f"exposes no step function to build the truncated surrogate from: check it with "
            f"steps <= {k + 1} (where window {k} is full BPTT), or write a make_case")
    cell = ModelCell(model, names, blocks or getattr(model, "gradcheck_blocks", None))
    vocab = _model_vocab(model, names)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(steps, 1))
    y = rng.integers(0, vocab, size=(steps, 1))
    params = {n: np.array(getattr(model, n), dtype=np.float64) for n in names}
    return Case(cell, params, Batch(x, y, np.ones((steps, 1))), seed=seed,
                info={"name": cell.name, "kind": "model class", "steps": steps, "vocab": vocab,
                      "parameters": list(names)})


class GuardedCell:
    """Any cell, each of its methods called under :class:`user_code`.

    Attributes read through it are the cell's own, methods wrapped (so a
    SystemExit in ``loss``, ``gradient``, ``step`` or any other becomes a one-line
    UserCodeError naming the method); attributes set through it are set on the
    cell.  A wrapped method is kept, so the numeric oracle's thousands of calls
    cost one extra Python call each.
    """

    def __init__(self, cell, label: str | None = None):
        name = getattr(cell, "name", None)
        object.__setattr__(self, "_gradcheck_cell", cell)
        object.__setattr__(self, "_gradcheck_label",
                           label or (name if isinstance(name, str) else type(cell).__name__))

    def __getattr__(self, name):
        if name.startswith("_gradcheck_"):     # not set yet (a copy being made)
            raise AttributeError(name)
        value = getattr(self._gradcheck_cell, name)
        if not callable(value) or isinstance(value, type):
            return value
        method = _guarded(value, user_code(f"{self._gradcheck_label}.{name}()"))
        object.__setattr__(self, name, method)      # later look-ups find it directly
        return method

    def __setattr__(self, name, value):
        setattr(self._gradcheck_cell, name, value)
        self.__dict__.pop(name, None)

    def __repr__(self):
        return f"GuardedCell({self._gradcheck_cell!r})"


def _guard_cell(cell):
    """``cell`` guarded by a GuardedCell, unless it is None or guards itself."""
    if cell is None or type(cell) in (FunctionCell, ModelCell, GuardedCell):
        return cell
    return GuardedCell(cell)


def guard_case(case: Case) -> Case:
    """A copy of ``case`` whose cell and symbolic twin call user code under :class:`user_code`."""
    return dataclasses.replace(case, cell=_guard_cell(case.cell),
                               symbolic=_guard_cell(case.symbolic))


def cell_name(cell) -> str:
    """A user's cell as results name it: its own ``name`` (set on it or on its class),
    else its class's name (a subclass of the reference GRU is not "gru")."""
    cell = getattr(cell, "_gradcheck_cell", cell)             # a GuardedCell's own cell
    for where in (vars(cell) if hasattr(cell, "__dict__") else {}, vars(type(cell))):
        if isinstance(where.get("name"), str):
            return where["name"]
    return type(cell).__name__
