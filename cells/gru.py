"""Reference GRU: forward pass and hand-written BPTT in NumPy.

Shapes are time-major: T steps, B sequences, D inputs, H hidden units,
K output classes, V vocabulary (token-id inputs).  Gate blocks are laid out
``r | z | h`` along the last axis of ``W``, ``U`` and ``b``.

Per layer l, with g the gate activation (logistic or hard sigmoid) and
m_t the mask::

    r_t  = g(x_t W_r + h_{t-1} U_r + b_r)                    reset gate
    z_t  = g(x_t W_z + h_{t-1} U_z + b_z)                    update gate
    n_t  = tanh(x_t W_h + b_h + (r_t * h_{t-1}) U_h)         reset="before"
    n_t  = tanh(x_t W_h + b_h + r_t * (h_{t-1} U_h + bn))    reset="after"
    h'_t = (1 - z_t) * n_t + z_t * h_{t-1}
    h_t  = m_t * h'_t + (1 - m_t) * h_{t-1}                  masked steps carry over

with h_{-1} = 0 and x_t the layer below's h_t for l > 0.  Readouts of the top
layer's states:

    readout="lm":   L = (1/B) sum_{t,b} m_tb * CE(softmax(h_tb V + c), y_tb)
    readout="mean": p_b = sum_t m_tb h_tb / max(1, sum_t m_tb)
                    L = (1/B) sum_b CE(softmax(p_b V + c), y_b)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cells.activations import GATES, log_softmax, tanh_grad_from_output
from gradcheck.batch import Batch, validate_mask
from gradcheck.params import ParamSpec, validate_params
from gradcheck.truncation import parse_truncation

__all__ = ["GRUConfig", "GRU", "RESETS", "READOUTS"]

RESETS = ("before", "after")
READOUTS = ("lm", "mean")
GATE_BLOCKS = ("r", "z", "h")


@dataclass(frozen=True)
class GRUConfig:
    """Structure and sizes of a GRU (everything but the sequence length and batch).

    input_size: D, the input (or embedding) width.
    hidden_size: H, the state width of every layer.
    layers: L, the number of stacked layers.
    classes: K, the readout's number of classes.
    vocab: V, the vocabulary size when ``embedding`` is set.
    reset: "before" (Cho et al. 2014) or "after" (cuDNN, torch.nn.GRU).
    gate: "sigmoid" or "hard" (clip(0.2 a + 0.5, 0, 1)).
    readout: "lm" (per-step softmax) or "mean" (masked mean pooling, then softmax).
    embedding: inputs are token ids looked up in an embedding ``E`` (V, D).
    truncate: -1 for full BPTT, else k >= 1 steps (see gradcheck.truncation).
    truncation: "window" (BPTT(k), the seed blog) or "tail" (scan's truncate_gradient).
    """

    input_size: int = 4
    hidden_size: int = 5
    layers: int = 1
    classes: int = 3
    vocab: int = 7
    reset: str = "before"
    gate: str = "sigmoid"
    readout: str = "lm"
    embedding: bool = False
    truncate: int = -1
    truncation: str = "window"

    def __post_init__(self):
        for name in ("input_size", "hidden_size", "layers", "classes", "vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name, allowed in (("reset", RESETS), ("gate", tuple(GATES)), ("readout", READOUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        parse_truncation(self.truncate, self.truncation)

    def as_dict(self) -> dict:
        return asdict(self)


class GRU:
    """The reference GRU: ``loss(params, batch)`` and ``gradient(params, batch)``."""

    name = "gru"

    def __init__(self, config: GRUConfig | None = None, **kwargs):
        self.config = config if config is not None else GRUConfig(**kwargs)
        self.gate, self.gate_grad = GATES[self.config.gate]
        self.truncation = parse_truncation(self.config.truncate, self.config.truncation)

    # ----------------------------------------------------------------- layout
    def param_specs(self) -> list[ParamSpec]:
        c = self.config
        H = c.hidden_size
        specs = []
        if c.embedding:
            specs.append(ParamSpec("E", (c.vocab, c.input_size), layer=-1))
        for l in range(c.layers):
            d_in = c.input_size if l == 0 else H
            specs.append(ParamSpec(f"W{l}", (d_in, 3 * H), GATE_BLOCKS, 1, layer=l))
            specs.append(ParamSpec(f"U{l}", (H, 3 * H), GATE_BLOCKS, 1, layer=l))
            specs.append(ParamSpec(f"b{l}", (3 * H,), GATE_BLOCKS, 0, layer=l))
            if c.reset == "after":
                specs.append(ParamSpec(f"bn{l}", (H,), ("h",), 0, layer=l))
        specs.append(ParamSpec("V", (H, c.classes)))
        specs.append(ParamSpec("c", (c.classes,)))
        return specs

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random float64 parameters: N(0, 1/fan_in) weights, N(0, 0.25) biases."""
        params = {}
        for spec in self.param_specs():
            if len(spec.shape) == 2 and spec.name != "E":
                scale = 1.0 / np.sqrt(spec.shape[0])
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

    # -------------------------------------------------- one step, and its BPTT
    def _layer_step(self, l, params, h, xp_t, m_t):
        """h_t of layer l from h = h_{t-1} (B, H) and xp_t = x_t W + b (B, 3H).

        Returns h_t and what the step's backward needs.
        """
        H = self.config.hidden_size
        U = params[f"U{l}"]                                     # (H, 3H) r | z | h
        a_rz = xp_t[:, :2 * H] + h @ U[:, :2 * H]               # (B, 2H) gate pre-activations
        rz = self.gate(a_rz)
        r, z = rz[:, :H], rz[:, H:]
        if self.config.reset == "before":
            q = None
            n = np.tanh(xp_t[:, 2 * H:] + (r * h) @ U[:, 2 * H:])   # (B, H)
        else:
            q = h @ U[:, 2 * H:] + params[f"bn{l}"]             # (B, H)
            n = np.tanh(xp_t[:, 2 * H:] + r * q)
        h_new = (1.0 - z) * n + z * h
        mt = m_t[:, None]                                       # (B, 1)
        return mt * h_new + (1.0 - mt) * h, (a_rz, rz, n, q, mt)

    def _layer_step_backward(self, l, params, dh, h, step_cache, grads):
        """BPTT of one step: dL/dh_t -> (dL/dh_{t-1}, dL/dxp_t); adds to dU (and dbn)."""
        H = self.config.hidden_size
        U = params[f"U{l}"]
        dU = grads[f"U{l}"]
        a_rz, rz, n, q, mt = step_cache
        r, z = rz[:, :H], rz[:, H:]
        # h_t = m h'_t + (1 - m) h_{t-1}
        dh_new = mt * dh
        dh_prev = (1.0 - mt) * dh
        # h'_t = (1 - z) n + z h_{t-1}
        dn = dh_new * (1.0 - z)
        dz = dh_new * (h - n)
        dh_prev += dh_new * z
        # n = tanh(a_h)
        da_h = dn * tanh_grad_from_output(n)                    # (B, H)
        if q is None:
            # a_h = x W_h + b_h + (r * h) U_h
            drh = da_h @ U[:, 2 * H:].T
            dr = drh * h
            dh_prev += drh * r
            dU[:, 2 * H:] += self._outer(r * h, da_h)
        else:
            # a_h = x W_h + b_h + r * q,  q = h U_h + bn
            dr = da_h * q
            dq = da_h * r
            dU[:, 2 * H:] += self._outer(h, dq)
            grads[f"bn{l}"] += dq.sum(axis=0)
            dh_prev += dq @ U[:, 2 * H:].T
        # r = g(a_r), z = g(a_z);  a_r = x W_r + h U_r + b_r, likewise a_z
        gp = self.gate_grad(a_rz, rz)                           # (B, 2H)
        da_r = dr * gp[:, :H]
        da_z = dz * gp[:, H:]
        dU[:, :H] += self._outer(h, da_r)
        dU[:, H:2 * H] += self._outer(h, da_z)
        dh_prev += da_r @ U[:, :H].T + da_z @ U[:, H:2 * H].T
        return dh_prev, np.concatenate([da_r, da_z, da_h], axis=1)   # (B, H), (B, 3H)

    # ----------------------------------------------------- the step interface
    def embed(self, params, batch: Batch) -> np.ndarray:
        """Layer 0's inputs (T, B, D): E[ids] with an embedding, else x itself."""
        if self.config.embedding:
            return params["E"][batch.x]
        return np.asarray(batch.x, dtype=np.float64)

    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        """h_{-1} = 0 for every layer."""
        return [np.zeros((batch_size, self.config.hidden_size)) for _ in range(self.config.layers)]

    def step(self, params, state, x_t, m_t) -> list[np.ndarray]:
        """One time step of every layer: ``state`` (list of (B, H)) -> the next state."""
        new = []
        for l, h in enumerate(state):
            xp_t = x_t @ params[f"W{l}"] + params[f"b{l}"]       # (B, 3H)
            h_t, _ = self._layer_step(l, params, h, xp_t, m_t)
            new.append(h_t)
            x_t = h_t
        return new

    @staticmethod
    def output(state) -> np.ndarray:
        """What the readout sees of a state: the top layer's h_t (B, H)."""
        return state[-1]

    # ---------------------------------------------------------------- readout
    def readout_loss(self, params, top, batch: Batch) -> float:
        """The loss from the top layer's states ``top`` (T, B, H)."""
        return self._readout(params, top, batch)[0]

    def _readout(self, params, top, batch: Batch):
        c = self.config
        m = batch.mask                                          # (T, B)
        B = m.shape[1]
        V, cb = params["V"], params["c"]
        if c.readout == "lm":
            logp = log_softmax(top @ V + cb)                    # (T, B, K)
            nll = -np.take_along_axis(logp, batch.y[..., None], -1)[..., 0]
            return float((m * nll).sum() / B), dict(logp=logp)
        count = np.maximum(m.sum(axis=0), 1.0)                  # (B,)
        pooled = (m[..., None] * top).sum(axis=0) / count[:, None]   # (B, H)
        logp = log_softmax(pooled @ V + cb)                     # (B, K)
        loss = -np.take_along_axis(logp, batch.y[:, None], -1).sum() / B
        return float(loss), dict(logp=logp, pooled=pooled, count=count)

    def _readout_backward(self, params, top, batch: Batch, rc, grads) -> np.ndarray:
        """dL/dtop (T, B, H); sets the gradients of V and c."""
        m = batch.mask
        B = m.shape[1]
        V = params["V"]
        dlogits = np.exp(rc["logp"])                            # softmax
        if self.config.readout == "lm":
            # dL/dlogits = m (softmax - onehot) / B
            np.put_along_axis(dlogits, batch.y[..., None],
                              np.take_along_axis(dlogits, batch.y[..., None], -1) - 1.0, -1)
            dlogits *= m[..., None] / B                         # (T, B, K)
            grads["V"] = self._outer(top, dlogits)
            grads["c"] = dlogits.sum(axis=(0, 1))
            return dlogits @ V.T                                # (T, B, H)
        dlogits[np.arange(B), batch.y] -= 1.0
        dlogits /= B                                            # (B, K)
        grads["V"] = self._outer(rc["pooled"], dlogits)
        grads["c"] = dlogits.sum(axis=0)
        dpooled = dlogits @ V.T                                 # (B, H)
        return m[..., None] * (dpooled / rc["count"][:, None])  # (T, B, H)

    # ------------------------------------------------------- whole sequences
    def forward(self, params, batch: Batch):
        """Loss and the cache the backward pass needs."""
        H = self.config.hidden_size
        m = batch.mask                                          # (T, B)
        T, B = m.shape
        x = self.embed(params, batch)                           # (T, B, D)
        layers = []
        for l in range(self.config.layers):
            xp = x @ params[f"W{l}"] + params[f"b{l}"]          # (T, B, 3H) all steps in one matmul
            hs = np.zeros((T + 1, B, H))                        # hs[t + 1] = h_t, hs[0] = h_{-1} = 0
            steps = []
            for t in range(T):
                hs[t + 1], step_cache = self._layer_step(l, params, hs[t], xp[t], m[t])
                steps.append(step_cache)
            layers.append(dict(x=x, hs=hs, steps=steps))
            x = hs[1:]                                          # input of the layer above
        loss, rc = self._readout(params, x, batch)
        return loss, dict(layers=layers, top=x, readout=rc)

    def loss(self, params, batch: Batch) -> float:
        return self.forward(params, batch)[0]

    @staticmethod
    def _previous_state(hs, t):
        """h_{t-1}, the state entering step t; ``hs[0]`` is the initial state h_{-1} = 0."""
        return hs[t]

    def _window_start(self, t, steps):
        """First step BPTT reaches from the readout's use of h_t (see gradcheck.truncation)."""
        return self.truncation.window_start(t, steps)

    @staticmethod
    def _outer(x, d):
        """sum over leading axes of outer products x_i (outer) d_i: (..., P), (..., Q) -> (P, Q)."""
        return x.reshape(-1, x.shape[-1]).T @ d.reshape(-1, d.shape[-1])

    def _backward_layers(self, params, cache, dtop, t_lo, t_hi, grads, batch, record=None):
        """BPTT of every layer through steps t_hi down to t_lo; ``dtop`` is dL/dh_t of the
        top layer.  The adjoint of the state entering step t_lo is dropped (that state
        is frozen).  ``record``, when given, receives each step's parameter
        contributions and the adjoints of the carried states (see gradient_details)."""
        T, B = batch.mask.shape
        top = self.config.layers - 1
        dabove = dtop                                           # dL/dh_t arriving from above
        span = slice(t_lo, t_hi + 1)
        for l in reversed(range(self.config.layers)):
            lc = cache["layers"][l]
            W = params[f"W{l}"]
            dxp = np.zeros((T, B, W.shape[1]))                  # dL/d(x_t W + b)
            dh_all = np.zeros((T, B, self.config.hidden_size))
            dh_next = 0.0                                       # dL/dh_t through step t + 1
            for t in range(t_hi, t_lo - 1, -1):
                dh = dabove[t] + dh_next                        # total dL/dh_t
                dh_all[t] = dh
                h = self._previous_state(lc["hs"], t)           # h_{t-1}
                if record is None:
                    dh_next, dxp[t] = self._layer_step_backward(l, params, dh, h, lc["steps"][t],
                                                                grads)
                    continue
                own = {k: np.zeros_like(grads[k]) for k in (f"U{l}", f"bn{l}") if k in grads}
                dh_next, dxp[t] = self._layer_step_backward(l, params, dh, h, lc["steps"][t], own)
                for k, v in own.items():
                    grads[k] += v
                    record["steps"][k][t] = v
            # xp = x W + b for the steps in the span
            grads[f"W{l}"] += self._outer(lc["x"][span], dxp[span])
            grads[f"b{l}"] += dxp[span].sum(axis=(0, 1))
            if record is not None:
                for t in range(t_lo, t_hi + 1):
                    record["steps"][f"W{l}"][t] = self._outer(lc["x"][t], dxp[t])
                    record["steps"][f"b{l}"][t] = dxp[t].sum(axis=0)
                # the carried state s_t feeds step t + 1 (and, on top, the readout at t);
                # a lower layer's h_t also feeds the layer above at t, which s_t excludes
                record["adjoints"][l] = dh_all - (dabove if l < top else 0.0)
            dabove = np.zeros(lc["x"].shape)
            dabove[span] = dxp[span] @ W.T                      # dL/dx_t of this layer
        if self.config.embedding:
            # x_t = E[ids_t]: scatter-add each step's input adjoint to its token's row
            np.add.at(grads["E"], batch.x[span], dabove[span])
            if record is not None:
                for t in range(t_lo, t_hi + 1):
                    np.add.at(record["steps"]["E"][t], batch.x[t], dabove[t])

    def gradient(self, params, batch: Batch) -> dict[str, np.ndarray]:
        """dL/dparams by hand-written BPTT (truncated as ``self.truncation`` says)."""
        return self.loss_and_gradient(params, batch)[1]

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
        (each step's share of the gradient of every per-step parameter: W, U, b,
        bn, E; they sum to the gradient) and ``state_adjoints``, one ``(T, B, H)``
        array per layer: dL/ds_t for the state s_t carried out of step t (into
        step t + 1 and, on the top layer, into the readout at t).
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
