"""The one place the Theano-API library is imported.

``load(name)`` returns a :class:`Backend`: the handful of symbolic operations
the symbolic cells need, the same for PyTensor (default) and Theano 1.0.5::

    bk = load("pytensor")            # or load("theano")
    T = bk.tensor                    # pytensor.tensor / theano.tensor
    hs = bk.scan(step, sequences=[m, xp], outputs_info=[h0], non_sequences=[U])
    f = bk.function([x], [loss] + bk.grad(loss, [W]))

The library is imported lazily, on the first ``load`` of its name, and the
namespace is cached per name.

``scan`` returns only the outputs (never the updates dict): one variable for a
single output, else a list, in the order of ``outputs_info``.

Compilation mode.  Functions are compiled with the Python linker and the
``fast_compile`` rewrites (``Mode(linker="py", optimizer="fast_compile")``):
gradient checks run small graphs a few times, so compile time dominates and
C compilation of every graph is not worth it.  Scan inner graphs are compiled
in ``FAST_COMPILE`` mode (pure Python, no C thunks) for the same reason.  The
environment variable ``GRADCHECK_PYTENSOR_MODE`` (``GRADCHECK_THEANO_MODE``
for Theano) overrides both with a named library mode, e.g. ``FAST_RUN``; it
is read when the backend is first loaded.

Gates match :mod:`cells.activations` exactly: ``sigmoid`` is the library's
logistic function, ``hard_sigmoid(a) = clip(0.2 a + 0.5, 0, 1)`` and
``log_softmax`` is taken over the last axis, shifted by its (gradient-free)
max.  One difference at measure-zero points: the library's ``clip`` passes
gradient 0.2 at the kinks a = +-2.5 where the NumPy reference takes 0.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Backend", "BACKENDS", "load"]

BACKENDS = ("pytensor", "theano")

_BLAS_MESSAGE = "Using NumPy C-API based implementation for BLAS functions"

_cache: dict[str, "Backend"] = {}


@dataclass(frozen=True)
class Backend:
    """What the symbolic cells use of a Theano-API library.

    name: "pytensor" or "theano".
    version: the library's version string.
    tensor: the tensor module (``pytensor.tensor`` / ``theano.tensor``).
    mode: the compilation mode of ``function`` (a Mode object or a mode name).
    scan: ``scan(fn, sequences, outputs_info, non_sequences=None,
        truncate_gradient=-1)`` -> outputs only.
    grad: ``grad(cost, wrt)``, the library's ``grad``.
    function: ``function(inputs, outputs)`` compiled in ``mode``.
    sigmoid, hard_sigmoid, log_softmax: elementwise gates and the readout's
        log softmax over the last axis.
    disconnected_grad: the identity, with no gradient flowing through it.
    """

    name: str
    version: str
    tensor: Any
    mode: Any
    scan: Callable
    grad: Callable
    function: Callable
    sigmoid: Callable
    hard_sigmoid: Callable
    log_softmax: Callable
    disconnected_grad: Callable

    def __repr__(self):
        return f"Backend({self.name} {self.version})"


def load(name: str = "pytensor") -> Backend:
    """The backend ``name`` ("pytensor" or "theano"), imported on first use."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose pytensor or theano")
    if name not in _cache:
        _cache[name] = _load_pytensor() if name == "pytensor" else _load_theano()
    return _cache[name]


# ------------------------------------------------------------------ helpers
class _DropMessage(logging.Filter):
    """Drop log records whose message starts with one fixed text."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.text)


def _env_mode(name: str) -> str | None:
    value = os.environ.get(f"GRADCHECK_{name.upper()}_MODE", "").strip()
    return value or None


def _make_ops(tensor, disconnected_grad):
    """sigmoid-free gate helpers written with the library's tensor ops."""

    def hard_sigmoid(a):
        return tensor.clip(0.2 * a + 0.5, 0.0, 1.0)

    def log_softmax(a):
        # the shift cancels in value and in gradient, so it carries none
        shifted = a - disconnected_grad(tensor.max(a, axis=-1, keepdims=True))
        return shifted - tensor.log(tensor.sum(tensor.exp(shifted), axis=-1, keepdims=True))

    return hard_sigmoid, log_softmax


def _first_output(result):
    """The outputs of a ``scan`` call that returned ``(outputs, updates)``."""
    outputs, updates = result
    if updates:
        raise ValueError(f"scan produced shared-variable updates {updates}; none expected")
    return outputs


# ----------------------------------------------------------------- pytensor
def _load_pytensor() -> Backend:
    try:
        import pytensor
        import pytensor.tensor as pt
        from pytensor.compile.mode import Mode
        from pytensor.gradient import disconnected_grad
    except ImportError as exc:
        raise ImportError(f"backend 'pytensor' needs PyTensor installed: {exc}") from exc

    # Without BLAS link flags PyTensor logs this each time it writes C code for
    # a BLAS op; it says nothing about correctness.
    logging.getLogger("pytensor.tensor.blas").addFilter(_DropMessage(_BLAS_MESSAGE))

    override = _env_mode("pytensor")
    mode = override or Mode(linker="py", optimizer="fast_compile")
    scan_mode = override or "FAST_COMPILE"

    def scan(fn, sequences, outputs_info, non_sequences=None, truncate_gradient=-1):
        return pytensor.scan(
            fn,
            sequences=sequences,
            outputs_info=outputs_info,
            non_sequences=non_sequences if non_sequences is not None else [],
            truncate_gradient=truncate_gradient,
            mode=scan_mode,
            return_updates=False,
        )

    def function(inputs, outputs):
        return pytensor.function(inputs, outputs, mode=mode)

    hard_sigmoid, log_softmax = _make_ops(pt, disconnected_grad)
    return Backend(
        name="pytensor",
        version=pytensor.__version__,
        tensor=pt,
        mode=mode,
        scan=scan,
        grad=pytensor.grad,
        function=function,
        sigmoid=pt.sigmoid,
        hard_sigmoid=hard_sigmoid,
        log_softmax=log_softmax,
        disconnected_grad=disconnected_grad,
    )


# ------------------------------------------------------------------- theano
def _load_theano() -> Backend:
    need = "backend 'theano' needs Theano 1.0.5 installed"
    try:
        import theano
        import theano.tensor as tt
        from theano.compile.mode import Mode
        from theano.gradient import disconnected_grad
        from theano.tensor.nnet import sigmoid
    except ImportError as exc:
        raise ImportError(f"{need}: {exc}") from exc
    version = str(getattr(theano, "__version__", "unknown"))
    if not version.startswith("1.0."):
        raise ImportError(f"{need}: found Theano {version}")

    override = _env_mode("theano")
    mode = override or Mode(linker="py", optimizer="fast_compile")

    def scan(fn, sequences, outputs_info, non_sequences=None, truncate_gradient=-1):
        return _first_output(theano.scan(
            fn,
            sequences=sequences,
            outputs_info=outputs_info,
            non_sequences=non_sequences if non_sequences is not None else [],
            truncate_gradient=truncate_gradient,
            mode=mode,
        ))

    def function(inputs, outputs):
        return theano.function(inputs, outputs, mode=mode)

    hard_sigmoid, log_softmax = _make_ops(tt, disconnected_grad)
    return Backend(
        name="theano",
        version=version,
        tensor=tt,
        mode=mode,
        scan=scan,
        grad=theano.grad,
        function=function,
        sigmoid=sigmoid,
        hard_sigmoid=hard_sigmoid,
        log_softmax=log_softmax,
        disconnected_grad=disconnected_grad,
    )
