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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck.batch import Batch
from gradcheck.params import ParamSpec

__all__ = ["Case", "FunctionCell", "function_cell", "ModelCell", "model_cell",
           "MODEL_PARAM_NAMES"]

# the order in which the blog's bptt returns its gradients
MODEL_PARAM_NAMES = ("E", "U", "V", "W", "b", "c")


@dataclass
class Case:
    """What one check needs: a cell, the point and the data, optionally a symbolic twin.

    cell: the cell under test (``param_specs``, ``loss``, ``gradient``).
    params: dict of named float arrays.
    batch: whatever the cell's ``loss`` and ``gradient`` take as their second argument.
    symbolic: the autodiff oracle, with ``loss`` and ``gradient`` like the cell's, or None.
    seed: the seed the case was drawn with, if any.
    info: a description of the cell for the result (name, sizes).
    oracles: the oracles to compare by default (None: all the case has).
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

    def param_specs(self) -> list[ParamSpec]:
        return list(self._specs)

    def loss(self, params, batch):
        return self._loss(params, batch)       # the harness checks that it is a scalar

    def gradient(self, params, batch) -> dict:
        return dict(self._gradient(params, batch))


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
                return float(self.model.calculate_total_loss([x], [y]))
            out = self.model.forward_propagation(x)
            o = out[0] if isinstance(out, (tuple, list)) else out
            o = np.asarray(o, dtype=np.float64).reshape(len(x), -1)
            # L = -sum_t log o_t[y_t], the loss whose gradient the blog's bptt computes
            return float(-np.log(o[np.arange(len(y)), y]).sum())
        return self._with(params, total)

    def gradient(self, params, batch) -> dict:
        x, y = self._sequence(batch)
        grads = self._with(params, lambda: self.model.bptt(x, y))
        grads = list(grads)
        if len(grads) != len(self.names):
            raise ValueError(
                f"{self.name}.bptt returned {len(grads)} arrays for the {len(self.names)} "
                f"parameters {', '.join(self.names)}: set gradcheck_params on the model to "
                "name them in the order bptt returns them")
        return {n: np.asarray(g) for n, g in zip(self.names, grads)}


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
