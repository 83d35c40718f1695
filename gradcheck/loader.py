"""Load a user's cell from ``path/to/file.py:NAME`` and turn it into a :class:`Case`.

NAME may be:

- a function ``make_case(seed)`` (or ``make_case(seed, steps, batch)``) returning a
  :class:`gradcheck.Case`: the general form;
- a :class:`gradcheck.Case` object;
- a blog-style model class (instantiated with no arguments) or instance, with
  ``forward_propagation(x)`` and ``bptt(x, y)``: see :func:`gradcheck.model_cell`;
- a layer written for the Theano LSTM tutorial, ``<name>_layer(tparams,
  state_below, options, prefix, mask)`` beside its ``param_init_<name>``: it has
  no hand BPTT, so its numeric and autodiff gradients are compared (with the
  tutorial's mean pooling and softmax on top); see :mod:`gradcheck.theano_layer`.

Every problem is a :class:`UserCodeError` (a ValueError) with one line that
says what is wrong, so the CLI can exit 2 without a traceback.  That includes
user code that exits (``sys.exit``, argparse) while it is imported or called:
every call into it runs under :class:`gradcheck.user_cells.user_code`.
What it prints can be sent to stderr with :func:`user_output_to_stderr`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from pathlib import Path

import numpy as np

from gradcheck.user_cells import Case, UserCodeError, guard_case, model_cell, user_code

__all__ = ["UserCodeError", "exec_file", "is_file_target", "load_target", "case_from_target",
           "layer_case", "sizes_taken", "user_code", "calling_user_code", "user_output_to_stderr"]

MODEL_METHODS = ("forward_propagation", "bptt")


@contextlib.contextmanager
def user_output_to_stderr(active: bool = True):
    """While active, ``sys.stdout`` is ``sys.stderr``: what user code prints goes to stderr.

    For ``--json``, whose stdout must be one JSON object: wrap the loading and
    checking in it, not the printing of the result.  Inactive, it changes nothing.
    """
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def calling_user_code(what: str):
    """Run user code while loading: an exception, or an exit, is a one-line UserCodeError."""
    try:
        with user_code(what):
            yield
    except UserCodeError:
        raise
    except Exception as exc:
        raise UserCodeError(f"{what} raised {type(exc).__name__}: {exc}") from None


def is_file_target(text: str) -> bool:
    """``path.py:NAME`` (a file target) rather than a built-in cell name."""
    path, sep, name = text.rpartition(":")
    return bool(sep) and path.endswith(".py")


def exec_file(path, namespace: dict | None = None):
    """Run the Python file ``path`` as a fresh module, ``namespace`` predefined in it.

    The file's folder is on ``sys.path`` while it runs, so it may import its
    neighbours.  Every failure is a one-line UserCodeError.
    """
    file = Path(path)
    if not file.is_file():
        raise UserCodeError(f"no such file: {path}")
    module_name = f"gradcheck_user_{abs(hash((str(file.resolve()), namespace is None)))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(namespace or {})
    sys.modules[module_name] = module
    folder = str(file.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        with user_code(f"importing {path}", importing=True):
            spec.loader.exec_module(module)
    except UserCodeError:
        raise
    except SyntaxError as exc:
        raise UserCodeError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise UserCodeError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(folder)
    return module


def load_target(text: str):
    """The object NAME defined by ``path.py:NAME``."""
    path, sep, name = text.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise UserCodeError(f"{text!r} is not of the form path/to/file.py:NAME")
    module = exec_file(path)
    if not hasattr(module, name):
        defined = [n for n in vars(module) if not n.startswith("_")][:12]
        raise UserCodeError(f"{path} defines no {name!r} (it defines {', '.join(defined)})")
    return getattr(module, name)


def _is_model(obj) -> bool:
    return not _missing_methods(obj)


def _missing_methods(obj) -> list[str]:
    """The methods of a blog-style model (forward_propagation, bptt) that ``obj`` lacks."""
    return [m for m in MODEL_METHODS if not callable(getattr(obj, m, None))]


def _refuse_half_model(obj, name: str) -> None:
    """A UserCodeError naming the missing method when ``obj`` has one model method only."""
    missing = _missing_methods(obj)
    if len(missing) == 1:
        present = next(m for m in MODEL_METHODS if m not in missing)
        raise UserCodeError(
            f"{name} has {present} but no {missing[0]} method: a blog-style model needs "
            "forward_propagation(x) and bptt(x, y), bptt returning the gradients as a list")


def _instantiate(cls, name: str):
    """An instance of the model class ``cls``, made with no arguments."""
    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        raise UserCodeError(
            f"{name} needs constructor arguments ({exc}): define a module-level "
            f"instance, e.g. model = {name}(...), and point at it") from None
    except ValueError:
        pass                                # no signature to read: just try
    with calling_user_code(f"{name}()"):
        return cls()


def _call_make_case(fn, name: str, *, steps: int, batch: int, seed: int) -> Case:
    """The Case that the user's ``make_case``-style function ``fn`` returns."""
    params = inspect.signature(fn).parameters
    if "seed" not in params:
        raise UserCodeError(f"{name} must take a seed argument: def {name}(seed): ...")
    kwargs = {k: v for k, v in (("seed", seed), ("steps", steps), ("batch", batch))
              if k in params}
    with calling_user_code(f"{name}(...)"):
        case = fn(**kwargs)
    if not isinstance(case, Case):
        raise UserCodeError(f"{name}(...) returned {type(case).__name__}, not gradcheck.Case")
    return case


def case_from_target(obj, *, name: str, steps: int, batch: int, seed: int) -> Case:
    """Turn what ``load_target`` returned into a :class:`Case` (see the module docstring).

    The case's cell and symbolic twin call user code under ``user_code``: an exit
    there is a one-line UserCodeError too.
    """
    case = _case_of(obj, name=name, steps=steps, batch=batch, seed=seed)
    if case.seed is not None and (isinstance(case.seed, bool)
                                  or not isinstance(case.seed, (int, np.integer))
                                  or case.seed < 0):
        raise UserCodeError(f"{name} gives Case.seed={case.seed!r}: the seed must be an integer, "
                            "0 or more, or None")
    if not isinstance(case.info, dict):
        raise UserCodeError(f"{name} gives Case.info={case.info!r}: it must be a dict")
    return guard_case(case)


def sizes_taken(obj) -> tuple[str, ...]:
    """Which of the sizes ``steps`` and ``batch`` the target ``obj`` is built with: a Case
    none, a blog-style model its steps, a Theano layer both, a make_case-style
    function those its signature names."""
    if isinstance(obj, Case):
        return ()
    if _is_model(obj):
        return ("steps",)
    from gradcheck.theano_layer import is_layer_function
    if is_layer_function(obj):
        return ("steps", "batch")
    if inspect.isfunction(obj):
        params = inspect.signature(obj).parameters
        return tuple(k for k in ("steps", "batch") if k in params)
    return ()


def _case_of(obj, *, name: str, steps: int, batch: int, seed: int) -> Case:
    """The :class:`Case` that ``obj`` (a Case, model, layer or make_case) stands for."""
    if isinstance(obj, Case):
        return obj
    _refuse_half_model(obj, name)
    if inspect.isclass(obj):
        if _is_model(obj):
            return model_cell(_instantiate(obj, name), steps=steps, seed=seed)
        raise UserCodeError(
            f"{name} is a class without forward_propagation and bptt: point at a "
            "make_case(seed) function returning gradcheck.Case instead")
    if _is_model(obj):
        return model_cell(obj, steps=steps, seed=seed)
    from gradcheck.theano_layer import is_layer_function
    if is_layer_function(obj):
        return layer_case(obj, name=name, steps=steps, batch=batch, seed=seed)
    if inspect.isfunction(obj):
        return _call_make_case(obj, name, steps=steps, batch=batch, seed=seed)
    raise UserCodeError(
        f"{name} is a {type(obj).__name__}: expected a make_case(seed) function, a "
        "gradcheck.Case, a model class with forward_propagation and bptt, or a "
        "Theano-tutorial layer (name_layer beside param_init_name)")


def layer_case(layer_fn, *, name: str, steps: int, batch: int, seed: int, dim: int = 4,
               classes: int = 2, backend: str = "pytensor") -> Case:
    """A :class:`Case` for a Theano-tutorial layer: numeric against autodiff."""
    import numpy as np

    from gradcheck.batch import Batch
    from gradcheck.theano_layer import TheanoLayer, find_layer, tutorial_namespace

    module = sys.modules.get(layer_fn.__module__)
    namespace = layer_fn.__globals__
    for key, value in tutorial_namespace(backend, seed).items():
        namespace.setdefault(key, value)      # the tutorial's globals, where the file has none
    layer, init, stem = find_layer(module, name) if module is not None else (layer_fn, None, name)
    prefix = inspect.signature(layer).parameters.get("prefix")
    prefix = prefix.default if prefix is not None and isinstance(prefix.default, str) else stem
    model = TheanoLayer(layer, init, prefix, dim, classes, backend)
    with calling_user_code(f"{init.__name__}(...)"):
        params = model.init_params()
    model.bind(params)
    rng = np.random.default_rng(seed)
    data = Batch(rng.normal(size=(steps, batch, dim)), rng.integers(0, classes, size=batch),
                 np.ones((steps, batch)))
    return Case(model, params, data, symbolic=model, seed=seed, oracles=("numeric", "autodiff"),
                info={"name": name, "kind": "theano tutorial layer", "steps": steps,
                      "batch": batch, "dim_proj": dim, "classes": classes})
