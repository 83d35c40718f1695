"""What the stacked reference cells share, whatever their recurrence.

The reference GRU (:mod:`cells.gru`) and LSTM (:mod:`cells.lstm`) differ only
in one layer's step, its BPTT and the state it carries.  Everything else is
written once, here:

- the configuration checks (:func:`validate_config`);
- data: ``init_params``, ``sample_batch``, ``check_inputs``;
- layer 0's inputs, ``embed``: dense ``x``, or ``E[ids]``;
- the readouts of the top layer's states h_t (T, B, H), with their backward
  pass (the names ``V`` (H, K) and ``c`` (K,) are the readout's)::

    readout="lm":   L = (1/B) sum_{t,b} m_tb * CE(softmax(h_tb V + c), y_tb)
    readout="mean": p_b = sum_t m_tb h_tb / max(1, sum_t m_tb)
                    L = (1/B) sum_b CE(softmax(p_b V + c), y_b)

- one layer over all steps, ``_layer_forward``: x W + b of every step in one
  product per block (gates, candidate), then the subclass's ``_layer_step``
  writing into the layer's (T, ...) arrays (with or without a leading probe
  axis; used by ``forward`` and ``losses`` alike);
- the BPTT driver: ``loss``, ``loss_and_gradient``, ``gradient``,
  ``gradient_details`` and the truncation window (``_window_start``);
- ``losses``: the losses of many parameter sets in one vectorised forward
  pass, the parameters stacked along a leading "probe" axis (batched finite
  differences and complex steps, see :mod:`gradcheck.finite_differences`);
- whether the forward pass is analytic (``supports_complex_step``).

A subclass sets ``config`` (with the fields of :data:`SIZE_FIELDS`, ``gate``,
``readout``, ``embedding``, ``truncate``, ``truncation``) and ``truncation``,
and provides ``param_specs()``, ``forward(params, batch)`` -> ``(loss, cache)``
with ``cache["top"]`` the top layer's h_t (T, B, H) and ``cache["readout"]``
from ``_readout``, the step ``_layer_step(l, params, state, xp_t, m_t, out, blocks)``
with what the layer loop needs to call it (``_gate_columns``, ``_state_width``,
``_step_arrays``, ``_recurrent_blocks``), and ``_backward_layers(params, cache, dtop, t_lo, t_hi,
grads, batch, record)``, the hand BPTT of every layer over steps t_hi down to
t_lo.  ``_outer`` and ``_window_start`` are methods, so that deliberately
broken variants can override them.
"""

from __future__ import annotations

import itertools

import numpy as np

from cells import gate_kernels, workspace
from cells.activations import (GATES, LOOP_GATES, hard_sigmoid, log_normaliser, log_softmax,
                               sigmoid_in_loop)
from gradcheck.batch import Batch, validate_mask
from gradcheck.params import ParamSpec, validate_params
from gradcheck.perturbed_rows import PerturbedRows
from gradcheck.truncation import parse_truncation

__all__ = ["StackedCell", "validate_config", "probe_stack", "READOUTS", "SIZE_FIELDS",
           "HARD_GATE_NOT_ANALYTIC", "add_into", "multiply_into"]

READOUTS = ("lm", "mean")
SIZE_FIELDS = ("input_size", "hidden_size", "layers", "classes", "vocab")
HARD_GATE_NOT_ANALYTIC = "complex step needs analytic functions: the hard sigmoid's clip is not"


def probe_stack(params) -> tuple[int, dict[str, np.ndarray]]:
    """The probe count P and the parameters as the vectorised forward pass uses them.

    params: ``{name: (P, *shape)}``; a parameter that is the same in every probe
        should be a stride-0 view (``np.broadcast_to``), which is computed with once.

    Returns ``(P, stack)``: shared parameters without the probe axis; varying
    vectors (biases) as ``(P, 1, n)``, to broadcast against ``(P, rows, n)``;
    varying matrices as ``(P, rows, cols)``.
    """
    counts = {np.shape(v)[0] for v in params.values() if np.ndim(v)}
    if len(counts) != 1:
        raise ValueError("every parameter needs the same leading probe axis, got sizes "
                         f"{sorted(counts)}")
    P = counts.pop()
    stack = {}
    for name, value in params.items():
        if isinstance(value, PerturbedRows):
            stack[name] = value                                 # one table, P set elements
            continue
        value = np.asarray(value)
        if value.ndim < 2:
            raise ValueError(f"parameter {name} has no probe axis: shape {value.shape}")
        if P == 1 or value.strides[0] == 0:
            stack[name] = value[0]                              # shared by every probe
        elif value.ndim == 2:
            stack[name] = value[:, None, :]                     # (P, 1, n)
        else:
            stack[name] = value
    return P, stack


def _plus_classes(logits, c):
    """``logits`` (..., K) + c, class by class, in place (a last axis of 2 broadcasts
    slowly); ``logits`` itself when c is None (already added)."""
    if c is not None:
        for k in range(logits.shape[-1]):
            logits[..., k] += c[k]
    return logits


def _move_steps(a, source, destination):
    """``np.moveaxis(a, source, destination)`` of a (..., T, B, n) or (T, ..., B, n) array,
    or ``a`` itself when it has no probe axes (3-D: the move changes nothing).
    np.moveaxis costs ~2.4 us, and a layer's forward pass moves three arrays."""
    return a if a.ndim == 3 else np.moveaxis(a, source, destination)


def add_into(a, b):
    """a + b, written into ``a`` when it can hold the result (its shape, its dtype).

    a: a fresh array the caller owns (no other reference sees it change).
    b: what to add; a leading probe axis or a complex dtype that a lacks gives a
        new array instead (NumPy refuses such an in-place add before writing).
    """
    return _into(np.add, a, b)


def multiply_into(a, b):
    """a * b, written into ``a`` when it can hold the result (as ``add_into``)."""
    return _into(np.multiply, a, b)


def _into(ufunc, a, b):
    try:
        return ufunc(a, b, out=a)
    except (ValueError, TypeError):
        return ufunc(a, b)


def _loss_value(loss):
    """A loss as a Python float (complex under the complex step), or the (P,) losses."""
    if np.ndim(loss):
        return loss
    return complex(loss) if np.iscomplexobj(loss) else float(loss)


def validate_config(config, choices) -> None:
    """ValueError naming the first bad field of a cell's configuration.

    config: has the fields of :data:`SIZE_FIELDS` (positive integers, classes at least 2),
        ``truncate`` and ``truncation`` (see gradcheck.truncation.parse_truncation).
    choices: ``(field, allowed values)`` pairs, checked in order after the sizes.
    """
    for name in SIZE_FIELDS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if config.classes < 2:
        raise ValueError(f"classes={config.classes!r} must be at least 2: a softmax over one "
                         "class is 1 whatever its input, so the loss has no gradient")
    for name, allowed in choices:
        if getattr(config, name) not in allowed:
            raise ValueError(
                f"{name}={getattr(config, name)!r} is not one of {', '.join(allowed)}"
            )
    parse_truncation(config.truncate, config.truncation)


class StackedCell:
    """Inputs, readout and BPTT driver of a stacked cell (see the module docstring)."""

    config_class: type = None           # the cell's config dataclass
    gate_blocks: tuple[str, ...] = ()   # the blocks of W, U and b, in order
    # the numeric oracle may run ``losses`` in forked processes (gradcheck.probe_pool): the
    # passes run NumPy only; a subclass whose passes hold threads, files or devices says False
    probes_fork_safe: bool = True

    def __init__(self, config=None, **kwargs):
        self.config = config if config is not None else self.config_class(**kwargs)
        # the step's gate: called in loops that silence exp's overflow (see LOOP_GATES)
        self.gate, self.gate_grad = LOOP_GATES[self.config.gate], GATES[self.config.gate][1]
        self.truncation = parse_truncation(self.config.truncate, self.config.truncation)

    # ------------------------------------------------------------------- data
    def param_specs(self) -> list[ParamSpec]:
        """E (with an embedding); per layer W, U, b holding ``gate_blocks``; then V, c."""
        c = self.config
        H, G = c.hidden_size, len(self.gate_blocks)
        specs = []
        if c.embedding:
            specs.append(ParamSpec("E", (c.vocab, c.input_size), layer=-1, rows_indexed_by="x"))
        for l in range(c.layers):
            d_in = c.input_size if l == 0 else H
            specs.append(ParamSpec(f"W{l}", (d_in, G * H), self.gate_blocks, 1, layer=l))
            specs.append(ParamSpec(f"U{l}", (H, G * H), self.gate_blocks, 1, layer=l))
            specs.append(ParamSpec(f"b{l}", (G * H,), self.gate_blocks, 0, layer=l))
            specs += self._extra_layer_specs(l)
        specs.append(ParamSpec("V", (H, c.classes)))
        specs.append(ParamSpec("c", (c.classes,)))
        return specs

    def _extra_layer_specs(self, l) -> list[ParamSpec]:
        """Parameters of layer l beyond W, U and b (none here)."""
        return []

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random float64 parameters: N(0, 1/fan_in) weights, N(0, 0.25) biases.

        With hard-sigmoid gates the layer biases are N(0, 4) instead, so that about a
        quarter of the gates saturate (|a| > 2.5) and the derivative's zero branch is
        exercised too: a check that never saturates a hard gate cannot tell a slope
        of 0.2 everywhere from the right one.
        """
        hard = getattr(self.config, "gate", None) == "hard"
        params = {}
        for spec in self.param_specs():
            if len(spec.shape) == 2 and spec.name != "E":
                scale = 1.0 / np.sqrt(spec.shape[0])
            elif hard and spec.blocks is not None and len(spec.shape) == 1:
                scale = 2.0
            else:
                scale = 0.5
            params[spec.name] = rng.normal(0.0, scale, size=spec.shape)
        return params

    def sample_batch(self, rng: np.random.Generator, steps: int, batch: int,
                     mask: np.ndarray | None = None) -> Batch:
        """A random batch; ``mask`` defaults to all ones."""
        c = self.config
        if c.embedding:
            x = rng.integers(0, c.vocab, size=(steps, batch))
        else:
            x = rng.normal(size=(steps, batch, c.input_size))
        if c.readout == "lm":
            y = rng.integers(0, c.classes, size=(steps, batch))
        else:
            y = rng.integers(0, c.classes, size=(batch,))
        if mask is None:
            mask = np.ones((steps, batch))
        return Batch(x, y, validate_mask(mask, steps, batch))

    def check_inputs(self, params, batch: Batch) -> None:
        """ValueError naming the first problem with ``params`` or ``batch``."""
        c = self.config
        validate_params(self.param_specs(), params)
        x = np.asarray(batch.x)
        if c.embedding:
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"x must be (T, B) token ids, got {x.dtype} {x.shape}")
            if x.size and (x.min() < 0 or x.max() >= c.vocab):
                raise ValueError(f"token ids must lie in [0, {c.vocab})")
        elif x.ndim != 3 or x.shape[2] != c.input_size:
            raise ValueError(f"x must be (T, B, {c.input_size}), got {x.shape}")
        T, B = x.shape[:2]
        y_shape = (T, B) if c.readout == "lm" else (B,)
        y = np.asarray(batch.y)
        if y.shape != y_shape or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be {y_shape} class ids, got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= c.classes):
            raise ValueError(f"class ids must lie in [0, {c.classes})")
        validate_mask(batch.mask, T, B)

    def embed(self, params, batch: Batch) -> np.ndarray:
        """Layer 0's inputs (T, B, D): E[ids] with an embedding, else x itself.

        An embedding stacked along a probe axis, (P, V, D), gives (P, T, B, D).
        """
        if self.config.embedding:
            return params["E"][..., batch.x, :]
        return np.asarray(batch.x, dtype=np.float64)

    @staticmethod
    def _project(x, W, b, ws=None, name=None):
        """x_t W + b for all steps: x (..., T, B, D) -> (..., T, B, G), one product.

        The steps are stacked as rows, (T B, D) @ (D, G).  A stacked W (P, D, G)
        or b (P, 1, G) applies one matrix per probe to every step; b None: x W
        alone.  ``ws``: the workspace to take the result from, as array ``name``
        (None: a new array).
        """
        T, B, D = x.shape[-3:]
        x2 = x.reshape(x.shape[:-3] + (T * B, D))
        out = None
        if ws is not None:
            shape = np.broadcast_shapes(x2.shape[:-2], W.shape[:-2]) + (T * B, W.shape[-1])
            out = ws.empty(name, shape, np.result_type(x2, W))
        xp = np.matmul(x2, W, out=out)                          # (..., T B, G)
        if b is not None:
            xp = add_into(xp, b)
        return xp.reshape(xp.shape[:-2] + (T, B, xp.shape[-1]))

    @staticmethod
    def _steps_all_on(mask) -> np.ndarray:
        """(T,) True where every sequence of the step is on (its mask row is all ones)."""
        return (np.asarray(mask) == 1.0).all(axis=1)

    # ---------------------------------------------------------------- readout
    def readout_loss(self, params, top, batch: Batch) -> float:
        """The loss from the top layer's states ``top`` (T, B, H)."""
        return self._readout(params, top, batch)[0]

    def _readout(self, params, top, batch: Batch):
        """The loss and what its backward needs, from the top states ``top`` (..., T, B, H).

        Leading axes of ``top``, ``V`` (P, H, K) or ``c`` (P, 1, K) are probes:
        the loss is then one per probe (the "lm" readout then returns no cache: no
        backward pass takes probes).
        """
        c = self.config
        m = batch.mask                                          # (T, B)
        T, B = m.shape
        V, cb = params["V"], params["c"]
        if c.readout == "lm":
            logits, c_left = self._logit_rows(V, cb, top)       # (..., T B, K), c still to add
            if logits.ndim == 2:                                # one loss, and its cache
                logp = log_softmax(_plus_classes(logits, c_left).reshape(T, B, logits.shape[-1]))
                nll = -logp[np.arange(T)[:, None], np.arange(B), batch.y]  # -log p_tb(y_tb)
                loss = (m.reshape(T * B) * nll.reshape(T * B)).sum() / B
                return _loss_value(loss), dict(logp=logp)
            # probes: nll_tb = log_total - (l_tb,y_tb - shift), -logp's numbers to the bit,
            # (..., T B), by the compiled readout where it runs, else here
            nll = self._compiled_nll(logits, c_left, batch)
            if nll is None:
                logits = _plus_classes(logits, c_left)
                shift, log_total = log_normaliser(logits)
                y = np.broadcast_to(np.reshape(batch.y, T * B), shift.shape).reshape(-1)
                picked = logits.reshape(-1, logits.shape[-1])[np.arange(y.size), y]
                nll = log_total - (picked.reshape(shift.shape) - shift)
            # L = (1/B) sum_{t,b} m_tb nll_tb: each probe's T B terms in one contiguous row,
            # added as loss() adds them
            return (m.reshape(T * B) * nll).sum(axis=-1) / B, {}
        count = np.maximum(m.sum(axis=0), 1.0)                  # (B,)
        rows = _move_steps(top, -3, 0)                          # (T, ..., B, H): the states' order
        if not np.all(m == 1.0):
            rows = m.reshape((T,) + (1,) * (rows.ndim - 3) + (B, 1)) * rows
        pooled = rows.sum(axis=0) / count[:, None]              # (..., B, H), steps added in order
        logp = log_softmax(pooled @ V + cb)                     # (..., B, K)
        y = np.broadcast_to(batch.y[:, None], logp.shape[:-1] + (1,))
        loss = -np.take_along_axis(logp, y, -1)[..., 0].sum(axis=-1) / B
        return _loss_value(loss), dict(logp=logp, pooled=pooled, count=count)

    @staticmethod
    def _logit_rows(V, cb, top):
        """The logits' rows h_tb V of every step and sequence, (..., T B, K), and the c
        still to add to them by ``_plus_classes`` (None: added here).

        One product a probe, (T B, H) @ (H, K), as ``loss`` computes it: the same
        matrix shapes, so the same numbers to the last bit (one product over all
        probes' rows would round differently for some shapes).  A c of shape (K,)
        in the logits' dtype is left to add class by class (a last axis of 2
        broadcasts slowly; the compiled readout adds it as it reads the rows).
        """
        T, B, H = top.shape[-3:]
        logits = np.matmul(top.reshape(top.shape[:-3] + (T * B, H)), V)    # (..., T B, K)
        if np.ndim(cb) == 1 and np.result_type(logits, cb) == logits.dtype:
            return logits, cb
        return logits + cb, None                                # a probe axis or a dtype of c's

    @staticmethod
    def _compiled_nll(logits, c, batch):
        """The probes' -log p(y_tb) of the lm readout, (..., T B), from ``_logit_rows``'s
        ``logits`` and ``c`` by the compiled readout (``lm_nll``: the numbers of the
        NumPy code of ``_readout``), or None where it does not run or take these arrays."""
        if gate_kernels.KERNELS is None or logits.dtype != np.float64:
            return None
        rows, K = logits.shape[-2:]
        P = int(np.prod(logits.shape[:-2]))                     # (the rows may be none)
        nll = np.empty(logits.shape[:-1])
        if gate_kernels.KERNELS.lm_nll(logits.reshape(P, rows, K), c,
                                       np.asarray(batch.y).reshape(rows), nll.reshape(P, rows)):
            return nll
        return None

    def _readout_backward(self, params, top, batch: Batch, rc, grads) -> np.ndarray:
        """dL/dtop (T, B, H); sets the gradients of V and c."""
        m = batch.mask
        B = m.shape[1]
        V = params["V"]
        dlogits = np.exp(rc["logp"])                            # softmax
        if self.config.readout == "lm":
            # dL/dlogits = m (softmax - onehot) / B
            dlogits[np.arange(m.shape[0])[:, None], np.arange(B), batch.y] -= 1.0
            dlogits *= m[..., None] / B                         # (T, B, K)
            grads["V"] = self._outer(top, dlogits)
            grads["c"] = dlogits.sum(axis=(0, 1))
            dtop = workspace.active().empty("dtop", top.shape, np.result_type(dlogits, V))
            return np.matmul(dlogits, V.T, out=dtop)            # (T, B, H)
        dlogits[np.arange(B), batch.y] -= 1.0
        dlogits /= B                                            # (B, K)
        grads["V"] = self._outer(rc["pooled"], dlogits)
        grads["c"] = dlogits.sum(axis=0)
        dpooled = dlogits @ V.T                                 # (B, H)
        return m[..., None] * (dpooled / rc["count"][:, None])  # (T, B, H)

    # ------------------------------------------------------- whole sequences
    def forward(self, params, batch: Batch):
        raise NotImplementedError

    def _backward_layers(self, params, cache, dtop, t_lo, t_hi, grads, batch, record=None):
        raise NotImplementedError

    def loss(self, params, batch: Batch) -> float:
        with workspace.reusing_arrays(self.losses_match_loss):  # the cache is dropped here
            return self.forward(params, batch)[0]

    # ------------------------------------------------------- whole sequences
    def _layer_forward(self, l, params, x, mask, keep_steps=True):
        """Layer l over all steps: inputs x (..., T, B, D) -> h_t (..., T, B, H), and its cache.

        Leading axes are probes (see ``losses``); ``keep_steps`` keeps what the
        backward pass needs of every step.  The cache holds ``x``, ``states``
        ((T + 1, ..., B, S): states[t + 1] is the carried state after step t,
        states[0] the initial one, 0; (P, T + 1, B, S) in a pass that the
        subclass's ``_probe_steps`` takes), each step's ``_layer_step`` cache in
        ``steps``, the (T, B) ``mask``, and the (T, ..., B, width) arrays the steps
        wrote into, by the names ``_step_arrays`` gives them.
        """
        H = self.config.hidden_size
        T, B = mask.shape
        W, b = params[f"W{l}"], params[f"b{l}"]
        # x_t W + b of all steps at once, the sigmoid gates and the candidate apart
        # (contiguous blocks, so that the gate arithmetic runs over contiguous arrays)
        g = self._gate_columns()
        ws = workspace.active()                                 # reused arrays, or fresh ones
        loop = not keep_steps and self._probe_loop()            # the subclass's loop of a pass
        # a pass whose probes move W or b, stepped by that loop: b is added where the
        # steps read x W (the same sums), not over all the probes' (T, B, 3H) projections
        late = loop and (np.ndim(W) > 2 or np.ndim(b) > 1)
        bias = (b[..., :g], b[..., g:]) if late else None
        xp_gates = self._project(x, W[..., :g], None if late else b[..., :g], ws,
                                 ("xp_gates", l))               # (..., T, B, g)
        xp_cand = self._project(x, W[..., g:], None if late else b[..., g:], ws,
                                ("xp_candidate", l))            # (..., T, B, H)
        own = [params[k] for k in (f"U{l}", f"bn{l}") if k in params] + ([b] if late else [])
        lead = np.broadcast_shapes(xp_gates.shape[:-3], *(np.shape(p)[:-2] for p in own))
        dtype = np.result_type(xp_gates, *own)                  # complex under the complex step
        # a pass of the subclass's loop keeps each probe's states together, (P, T + 1, B, S):
        # the readout then reads each probe's (T B, H) rows where they are, uncopied
        by_probe = loop and len(lead) == 1
        if by_probe:
            states = ws.empty(("states by probe", l), lead + (T + 1, B, self._state_width()),
                              dtype)
            states[:, 0] = 0.0
        else:
            states = ws.empty(("states", l), (T + 1,) + lead + (B, self._state_width()), dtype)
            states[0] = 0.0
        # what the steps write: (T, ..., B, width) arrays kept for the backward pass,
        # or one (1, ..., B, width) set that every step reuses
        bufs = {name: ws.empty((name, l), (T if keep_steps else 1,) + lead + (B, width), dtype)
                if needed else None for name, width, needed in self._step_arrays()}
        kept = [[None] * T if buf is None else list(buf) if keep_steps else [buf[0]] * T
                for buf in bufs.values()]
        on = self._steps_all_on(mask)
        blocks = self._recurrent_blocks(l, params)
        # each step's views, made before the loop: inputs, states, and what it writes
        gates, candidate = _move_steps(xp_gates, -3, 0), _move_steps(xp_cand, -3, 0)
        xs = zip(gates, candidate)
        views = [states[:, t] for t in range(T + 1)] if by_probe else list(states)
        steps = []
        first = 0
        with np.errstate(over="ignore"):                        # for the gates' exp (LOOP_GATES)
            if not keep_steps and self._first_step_shared(l, params, xp_gates, xp_cand, own):
                # h_0 = 0, so h_0 U = 0 whatever U is: when only U differs from probe to
                # probe, step 0 is the same in each, computed once and copied to every probe
                U = params[f"U{l}"]
                state, _ = self._layer_step(l, {**params, f"U{l}": U[0]},
                                            np.zeros((B, self._state_width()), dtype),
                                            (xp_gates[0], xp_cand[0]), None if on[0] else mask[0])
                views[1][...] = state
                first = 1
            if loop:
                self._probe_steps(l, params, views, gates, candidate, [k[0] for k in kept], on,
                                  mask, first, blocks, bias)
                xs = ()                                         # every step taken
            for t, xp_t, *out in itertools.islice(zip(range(T), xs, *kept, views[1:]), first, None):
                m_t = None if on[t] else mask[t]                # None: no blend with the state
                state, step_cache = self._layer_step(l, params, views[t], xp_t, m_t, out=out,
                                                     blocks=blocks)
                self._written(out, step_cache[:len(bufs)] + (state,))   # where the backward reads
                if keep_steps:
                    steps.append(step_cache)
        top = states[:, 1:, :, :H] if by_probe else _move_steps(states[1:, ..., :H], 0, -3)
        return top, dict(x=x, states=states, steps=steps, mask=mask, **bufs)

    def _probe_loop(self) -> bool:
        """Whether ``_probe_steps`` takes the steps of a pass that keeps none (``losses``);
        False here: ``_layer_step`` is called step by step."""
        return False

    def _probe_steps(self, l, params, views, gates, candidate, out, on, mask, first, blocks,
                     bias=None) -> None:
        """Steps ``first`` .. T - 1 of layer l in a pass that keeps no step, where
        ``_probe_loop()`` says: h_t into ``views[t + 1]``, each step's arrays into ``out``
        (the buffers of ``_step_arrays``, shared by the steps).  ``gates`` and
        ``candidate`` are x_t W + b step by step, (T, ..., B, width), or x_t W alone
        when ``bias`` holds b's two blocks, to be added as the steps read them."""
        raise NotImplementedError

    def _first_step_shared(self, l, params, xp_gates, xp_cand, own) -> bool:
        """Whether step 0 of layer l is the same in every probe: U{l} alone has a probe
        axis (the inputs x_t W + b and the layer's other parameters have none) and the
        reference cell's step reads U only through h_0 U, which is 0 (a subclass that
        overrides the step or its blocks of U may read U otherwise: no)."""
        U = params.get(f"U{l}")
        if np.ndim(U) != 3 or xp_gates.ndim > 3 or xp_cand.ndim > 3:
            return False
        if any(np.shape(p)[:-2] for p in own if p is not U):
            return False
        return self._reference_kept(("_layer_step", "_recurrent_blocks"))

    def _gate_columns(self) -> int:
        """How many columns of W (and U, b) the sigmoid gates take, before the candidate's."""
        raise NotImplementedError

    def _state_width(self) -> int:
        """The width of the state a layer carries from step to step."""
        raise NotImplementedError

    def _step_arrays(self) -> list:
        """``(name, width, needed)`` of what ``_layer_step`` writes into (its ``out``, but
        the state), in order; an array not needed in this configuration is None."""
        raise NotImplementedError

    def _recurrent_blocks(self, l, params):
        """The views of layer l's recurrent parameters that its step multiplies by."""
        raise NotImplementedError

    def _gate_values(self, kernels, a, xp, out, keep_a):
        """``(a, g(a))`` of a step's gates, with ``a`` = h U (..., B, width) on entry and
        x W + b, ``xp``, added to it in place.

        The gates are written into ``a`` itself for sigmoid gates; for hard ones, whose
        slope needs ``a``, into ``out`` (or a new array).  ``kernels``: the compiled gate
        kernels (``cells.gate_kernels``), or None for NumPy; the numbers are the same.
        """
        if kernels is not None and self.gate is sigmoid_in_loop and not keep_a:
            if kernels.sigmoid_of_sum(a, xp):                   # sigma(a + xp)
                return a, a
        elif kernels is not None and self.gate is hard_sigmoid and keep_a:
            g = np.empty_like(a) if out is None else out
            if kernels.hard_sigmoid_of_sum(a, xp, g):           # clip(0.2 (a + xp) + 0.5, 0, 1)
                return a, g
        a = add_into(a, xp)
        return a, self.gate(a, out=out if keep_a else a)

    @staticmethod
    def _previous_state(states, t):
        """The state entering step t; ``states[0]`` is the initial state, 0."""
        return states[t]

    @staticmethod
    def _previous_states(states, steps):
        """The states entering ``steps`` (a range), stacked: ``_previous_state`` of each."""
        return states[steps.start:steps.stop]

    @staticmethod
    def _written(out, got):
        """Copy a step's results ``got`` into the arrays ``out`` it was given to write into,
        where it returned arrays of its own instead (a step that does not write in place):
        the backward pass reads the ``out`` arrays.  None entries are skipped."""
        for buf, value in zip(out, got):
            if buf is not None and value is not buf:
                buf[...] = value

    def losses(self, params, batch: Batch) -> np.ndarray:
        """The losses of P parameter sets in one vectorised forward pass (no backward).

        params: ``{name: (P, *shape)}``, the parameter sets stacked along a leading
            probe axis; pass a stride-0 view (``np.broadcast_to``) for a parameter
            that is the same in every probe, so that it is computed with once.
        batch: the inputs, targets and mask, shared by every probe.

        Returns the (P,) losses; each equals ``loss`` of that probe's parameters
        (the same operations on the same numbers, so to the last bit with the
        BLAS tested here).  Full BPTT only: a truncated cell's surrogate losses
        run through the step interface instead.  Complex parameters (the
        complex step) give complex losses.
        """
        P, stack = probe_stack(params)
        x = self.embed(stack, batch)                            # (T, B, D) or (P, T, B, D)
        for l in range(self.config.layers):
            x, _ = self._layer_forward(l, stack, x, batch.mask, keep_steps=False)
        loss, _ = self._readout(stack, x, batch)
        return loss.copy() if np.shape(loss) == (P,) else np.broadcast_to(loss, (P,)).copy()

    @staticmethod
    def probe_params(params) -> dict:
        """P parameter sets ``{name: (P, *shape)}`` as ``step`` takes them: its states and
        outputs then carry a leading probe axis, (P, B, ...), and ``readout_loss`` of the
        stacked outputs (P, T, B, H) gives the (P,) losses (see ``probe_stack``).  The
        steps do not change the state they are given."""
        return probe_stack(params)[1]

    def _reference_kept(self, names, owner="_layer_step") -> bool:
        """Whether no subclass of the reference cell (the class that first defines
        ``owner``) overrides any of ``names``."""
        mro = type(self).__mro__
        reference = max(i for i, c in enumerate(mro) if owner in vars(c))
        return not any(name in vars(c) for c in mro[:reference] for name in names)

    @property
    def steps_take_probes(self) -> bool:
        """Whether ``step`` takes ``probe_params``' stacked parameters and (P, B, ...) states.

        False when a subclass of the class that first defines ``step`` overrides the
        step interface (or the layer step under it): it may not broadcast a probe
        axis, or may update the state it is given in place.
        """
        return self._reference_kept(("step", "_layer_step", "output", "initial_state", "embed",
                                     "readout_loss", "_readout"), owner="step")

    def takes_perturbed_rows(self, name) -> bool:
        """Whether ``losses`` may receive parameter ``name`` as a PerturbedRows (see
        gradcheck.perturbed_rows): the embedding E, read only by ``embed``'s lookup."""
        return name == "E" and self.config.embedding

    @property
    def losses_match_loss(self) -> bool:
        """Whether ``losses`` computes the function ``loss`` does.

        False when a subclass of the reference cell (the class that first defines
        ``_layer_step``) overrides the forward pass (``forward``, ``loss``, ``embed``,
        the readout): ``losses`` would then still run the reference's forward.
        """
        return self._reference_kept(("forward", "loss", "embed", "_readout", "readout_loss",
                                     "_project"))

    @property
    def complex_step_reason(self) -> str | None:
        """Why the complex step cannot differentiate this cell, or None when it can."""
        if getattr(self.config, "gate", None) == "hard":
            return HARD_GATE_NOT_ANALYTIC
        return None

    @property
    def supports_complex_step(self) -> bool:
        """True when the forward pass is analytic and complex-safe (sigmoid gates)."""
        return self.complex_step_reason is None

    def _window_start(self, t, steps):
        """First step BPTT reaches from the readout's use of h_t (see gradcheck.truncation)."""
        return self.truncation.window_start(t, steps)

    @staticmethod
    def _outer(x, d):
        """sum over leading axes of outer products x_i (outer) d_i: (..., P), (..., Q) -> (P, Q)."""
        return x.reshape(-1, x.shape[-1]).T @ d.reshape(-1, d.shape[-1])

    def gradient(self, params, batch: Batch) -> dict[str, np.ndarray]:
        """dL/dparams by hand-written BPTT (truncated as ``self.truncation`` says)."""
        return self.loss_and_gradient(params, batch)[1]

    # loss_and_gradient()'s own gradient: the check need not run it again to compare
    gradient.gradcheck_derived = True

    def loss_and_gradient(self, params, batch: Batch):
        """``(L, dL/dparams)`` by one forward pass and hand-written BPTT.

        Truncation: ``full`` and ``tail k`` run one backward pass over steps
        max(0, T - k) .. T - 1; ``window k`` runs one per readout use of h_t,
        over steps max(0, t - k) .. t.
        """
        return self._backprop(params, batch, record=None)[:2]

    def gradient_details(self, params, batch: Batch) -> dict:
        """What the hand BPTT knows beyond the gradient, for localisation (full and tail).

        Returns ``loss``, ``gradient``, ``step_contributions`` ``{name: (T, *shape)}``
        (each step's share of the gradient of every per-step parameter: all but
        V and c; they sum to the gradient) and ``state_adjoints``, one ``(T, B, S)``
        array per layer: dL/ds_t for the state s_t carried out of step t (into
        step t + 1 and, on the top layer, into the readout at t).  s_t is what
        the step interface carries for the layer: h_t (S = H) for the GRU,
        [h_t | c_t] (S = 2H) for the LSTM.
        """
        if self.truncation.kind == "window":
            raise ValueError("gradient details are defined for full and tail BPTT only")
        T = batch.mask.shape[0]
        per_step = [n for n in params if n not in ("V", "c")]
        record = {"steps": {n: np.zeros((T,) + np.shape(params[n])) for n in per_step},
                  "adjoints": {}}
        loss, grads = self._backprop(params, batch, record=record)
        adjoints = [record["adjoints"][l] for l in range(self.config.layers)]
        return dict(loss=loss, gradient=grads, step_contributions=record["steps"],
                    state_adjoints=adjoints)

    def _backprop(self, params, batch, record):
        with workspace.reusing_arrays(self.losses_match_loss):  # the cache is dropped here
            return self._backprop_arrays(params, batch, record)

    def _backprop_arrays(self, params, batch, record):
        T = batch.mask.shape[0]
        loss, cache = self.forward(params, batch)
        grads = {name: np.zeros_like(value, dtype=np.float64) for name, value in params.items()}
        dtop = self._readout_backward(params, cache["top"], batch, cache["readout"], grads)
        if self.truncation.kind == "window":
            for t in range(T):
                d = np.zeros_like(dtop)
                d[t] = dtop[t]                                  # this step's use of h_t alone
                self._backward_layers(params, cache, d, self._window_start(t, T), t, grads, batch)
        else:
            self._backward_layers(params, cache, dtop, self._window_start(T - 1, T), T - 1,
                                  grads, batch, record)
        return loss, grads
