"""Run a layer written for the Theano LSTM tutorial (``lstm.py``), as the seed question's is.

Such a file defines ``param_init_<name>(options, params, prefix)`` and
``<name>_layer(tparams, state_below, options, prefix, mask)`` and leans on the
tutorial's globals: ``theano``, ``tensor``, ``config``, ``_p``,
``ortho_weight`` and ``numpy_floatX``.  :func:`load_layer_file` runs the file
with those names already defined, written on the configured backend (PyTensor
by default, whose ``scan`` returns ``(outputs, updates)`` here as Theano's did),
so the file runs unchanged.

:class:`TheanoLayer` compiles the layer once and gives its states ``(T, B, H)``
(or whatever shape the layer really returns), for ``gradcheck compare``, and
a cell (the tutorial's mean pooling and softmax readout on top) whose loss and
symbolic gradient the numeric and autodiff oracles can check.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from gradcheck.params import ParamSpec

__all__ = ["tutorial_namespace", "load_layer_file", "find_layer", "is_layer_function",
           "TheanoLayer"]

LAYER_ARGS = ("tparams", "state_below", "options")


def tutorial_namespace(backend: str = "pytensor", seed: int = 0) -> dict:
    """The globals the Theano LSTM tutorial gives its layers, on ``backend``."""
    from cells.backend import load

    bk = load(backend)
    T = bk.tensor
    rng = np.random.default_rng(seed)

    class _Tensor:
        """``tensor`` as the tutorial knew it: the backend's, plus ``tensor.nnet``."""
        nnet = SimpleNamespace(sigmoid=bk.sigmoid, hard_sigmoid=bk.hard_sigmoid,
                               softmax=getattr(T, "softmax", None))

        def __getattr__(self, name):
            return getattr(T, name)

    def scan(fn, sequences=None, outputs_info=None, non_sequences=None, n_steps=None,
             name=None, truncate_gradient=-1, **_ignored):
        # Theano's scan: returns (outputs, updates); a single output is the tensor itself
        outputs = bk.scan(fn, sequences=sequences or [], outputs_info=outputs_info,
                          non_sequences=non_sequences, truncate_gradient=truncate_gradient)
        return outputs, OrderedDict()

    config = SimpleNamespace(floatX="float64")
    theano = SimpleNamespace(scan=scan, config=config, function=bk.function, grad=bk.grad,
                             tensor=_Tensor())

    def _p(pp, name):
        return f"{pp}_{name}"

    def ortho_weight(ndim):
        w = rng.normal(size=(ndim, ndim))
        u, _, _ = np.linalg.svd(w)
        return u.astype(config.floatX)

    def numpy_floatX(data):
        return np.asarray(data, dtype=config.floatX)

    return {"theano": theano, "tensor": theano.tensor, "config": config, "_p": _p,
            "ortho_weight": ortho_weight, "numpy_floatX": numpy_floatX, "np": np,
            "numpy": np}


def load_layer_file(path, backend: str = "pytensor", seed: int = 0):
    """Execute ``path`` with the tutorial's globals defined; returns the module."""
    from gradcheck.loader import exec_file

    return exec_file(path, tutorial_namespace(backend, seed))


def is_layer_function(obj) -> bool:
    """A function taking (tparams, state_below, options, ...) like the tutorial's layers."""
    if not inspect.isfunction(obj):
        return False
    names = list(inspect.signature(obj).parameters)
    return tuple(names[:3]) == LAYER_ARGS


def find_layer(module, name: str):
    """The layer function ``name`` and its ``param_init_*`` partner in ``module``."""
    from gradcheck.loader import UserCodeError

    layer = getattr(module, name, None)
    if layer is None:
        raise UserCodeError(f"the file defines no {name!r}")
    if not is_layer_function(layer):
        raise UserCodeError(f"{name} does not take (tparams, state_below, options, prefix, mask)")
    stem = name[:-len("_layer")] if name.endswith("_layer") else name
    init = getattr(module, f"param_init_{stem}", None)
    if not callable(init):
        inits = [n for n in vars(module) if n.startswith("param_init_")]
        if len(inits) != 1:
            raise UserCodeError(f"cannot find param_init_{stem} beside {name}")
        init = getattr(module, inits[0])
    return layer, init, stem


class TheanoLayer:
    """A tutorial-style layer, compiled: its states, and a cell with the mean readout.

    layer, init: the layer and its ``param_init`` function.
    prefix: the tutorial's parameter prefix (``lstm`` in the seed, whatever the layer).
    dim: ``options['dim_proj']``, the input and hidden width.
    """

    # its gradient() is PyTensor's, as the autodiff oracle's is: no hand BPTT that the
    # analytic oracle could check (check_gradients refuses the analytic oracle for it)
    gradient_is_autodiff = True

    def __init__(self, layer, init, prefix: str, dim: int, classes: int, backend="pytensor"):
        self.layer, self.init, self.prefix = layer, init, prefix
        self.dim, self.classes, self.backend = dim, classes, backend
        self.options = {"dim_proj": dim, "ydim": classes}
        self.name = getattr(layer, "__name__", "layer")
        self._states_fn = self._cell_fn = None

    def init_params(self) -> dict[str, np.ndarray]:
        """The layer's own parameters from its param_init, plus the readout's U, b."""
        params = OrderedDict()
        params = self.init(self.options, params, prefix=self.prefix)
        out = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        rng = np.random.default_rng(len(out))
        out["U"] = 0.01 * rng.normal(size=(self.dim, self.classes))
        out["b"] = np.zeros(self.classes)
        return out

    def _build(self, names):
        from cells.backend import load

        bk = load(self.backend)
        T = bk.tensor
        tparams = OrderedDict()
        for n in names:
            shape_ndim = self._ndims[n]
            tparams[n] = (T.dmatrix, T.dvector)[shape_ndim == 1](n)
        x = T.dtensor3("x")           # (T, B, D)
        mask = T.dmatrix("mask")      # (T, B)
        y = T.lvector("y")            # (B,)
        proj = self.layer(tparams, x, self.options, prefix=self.prefix, mask=mask)
        return bk, T, tparams, x, mask, y, proj

    def states(self, params, x, mask) -> np.ndarray:
        """What the layer returns for inputs ``x`` (T, B, D) and ``mask`` (T, B)."""
        if self._states_fn is None:
            self._ndims = {k: np.ndim(v) for k, v in params.items()}
            names = [k for k in params if k not in ("U", "b")]
            bk, T, tparams, xs, mask_v, _, proj = self._build(names)
            self._state_names = names
            self._states_fn = bk.function(list(tparams.values()) + [xs, mask_v], proj)
        args = [params[n] for n in self._state_names]
        return np.asarray(self._states_fn(*args, np.asarray(x, np.float64),
                                          np.asarray(mask, np.float64)))

    # --- as a cell: the tutorial's mean pooling and softmax on top -----------------
    def param_specs(self) -> list[ParamSpec]:
        return [ParamSpec(n, s) for n, s in self._shapes.items()]

    def bind(self, params):
        """Remember the parameter names and shapes; returns self."""
        self._shapes = {k: np.shape(v) for k, v in params.items()}
        self._ndims = {k: np.ndim(v) for k, v in params.items()}
        return self

    def _compiled(self):
        if self._cell_fn is None:
            names = list(self._shapes)
            layer_names = [n for n in names if n not in ("U", "b")]
            bk, T, tparams, x, mask, y, proj = self._build(layer_names)
            U, b = T.dmatrix("U"), T.dvector("b")
            # p_b = sum_t m_tb h_tb / max(1, sum_t m_tb);  L = (1/B) sum_b CE(softmax(p_b U + b), y_b)
            pooled = (proj * mask[:, :, None]).sum(axis=0) / T.maximum(mask.sum(axis=0), 1.0)[:, None]
            logp = bk.log_softmax(T.dot(pooled, U) + b)
            loss = -logp[T.arange(y.shape[0]), y].mean()
            wrt = [tparams[n] for n in layer_names] + [U, b]
            grads = bk.grad(loss, wrt)
            order = layer_names + ["U", "b"]
            self._order = order
            self._cell_fn = bk.function(wrt + [x, mask, y], [loss] + list(grads))
        return self._cell_fn

    def loss_and_gradient(self, params, batch):
        fn = self._compiled()
        out = fn(*[params[n] for n in self._order], np.asarray(batch.x, np.float64),
                 np.asarray(batch.mask, np.float64), np.asarray(batch.y, np.int64))
        return float(out[0]), {n: np.asarray(g) for n, g in zip(self._order, out[1:])}

    def loss(self, params, batch) -> float:
        return self.loss_and_gradient(params, batch)[0]

    def gradient(self, params, batch) -> dict:
        return self.loss_and_gradient(params, batch)[1]
