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

    def as_dict(self) -> dict:
        return asdict(self)


class GRU:
    """The reference GRU: ``loss(params, batch)`` and ``gradient(params, batch)``."""

    name = "gru"

    def __init__(self, config: GRUConfig | None = None, **kwargs):
        self.config = config if config is not None else GRUConfig(**kwargs)
        self.gate, self.gate_grad = GATES[self.config.gate]

    # ----------------------------------------------------------------- layout
    def param_specs(self) -> list[ParamSpec]:
        c = self.config
        H = c.hidden_size
        specs = []
        if c.embedding:
            specs.append(ParamSpec("E", (c.vocab, c.input_size)))
        for l in range(c.layers):
            d_in = c.input_size if l == 0 else H
            specs.append(ParamSpec(f"W{l}", (d_in, 3 * H), GATE_BLOCKS, 1))
            specs.append(ParamSpec(f"U{l}", (H, 3 * H), GATE_BLOCKS, 1))
            specs.append(ParamSpec(f"b{l}", (3 * H,), GATE_BLOCKS, 0))
            if c.reset == "after":
                specs.append(ParamSpec(f"bn{l}", (H,), ("h",), 0))
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

    # ---------------------------------------------------------------- forward
    def forward(self, params, batch: Batch):
        """Loss and the cache the backward pass needs."""
        c = self.config
        H = c.hidden_size
        g = self.gate
        m = batch.mask                                          # (T, B)
        T, B = m.shape
        x = params["E"][batch.x] if c.embedding else batch.x    # (T, B, D)
        layers = []
        for l in range(c.layers):
            W, U, b = params[f"W{l}"], params[f"U{l}"], params[f"b{l}"]
            xp = x @ W + b                                      # (T, B, 3H) all steps in one matmul
            hs = np.zeros((T + 1, B, H))                        # hs[t + 1] = h_t, hs[0] = h_{-1} = 0
            a_rz = np.empty((T, B, 2 * H))                      # gate pre-activations
            gates = np.empty((T, B, 2 * H))                     # r | z
            ns = np.empty((T, B, H))                            # candidate n_t
            qs = np.empty((T, B, H)) if c.reset == "after" else None
            for t in range(T):
                h = hs[t]                                       # (B, H)
                a_rz[t] = xp[t, :, :2 * H] + h @ U[:, :2 * H]
                gates[t] = g(a_rz[t])
                r, z = gates[t, :, :H], gates[t, :, H:]
                if c.reset == "before":
                    ns[t] = np.tanh(xp[t, :, 2 * H:] + (r * h) @ U[:, 2 * H:])
                else:
                    qs[t] = h @ U[:, 2 * H:] + params[f"bn{l}"]
                    ns[t] = np.tanh(xp[t, :, 2 * H:] + r * qs[t])
                h_new = (1.0 - z) * ns[t] + z * h
                mt = m[t][:, None]
                hs[t + 1] = mt * h_new + (1.0 - mt) * h
            layers.append(dict(x=x, hs=hs, a_rz=a_rz, gates=gates, ns=ns, qs=qs))
            x = hs[1:]                                          # input of the layer above
        top = x                                                 # (T, B, H)
        V, cb = params["V"], params["c"]
        if c.readout == "lm":
            logp = log_softmax(top @ V + cb)                    # (T, B, K)
            nll = -np.take_along_axis(logp, batch.y[..., None], -1)[..., 0]
            loss = (m * nll).sum() / B
            pooled = count = None
        else:
            count = np.maximum(m.sum(axis=0), 1.0)              # (B,)
            pooled = (m[..., None] * top).sum(axis=0) / count[:, None]   # (B, H)
            logp = log_softmax(pooled @ V + cb)                 # (B, K)
            loss = -np.take_along_axis(logp, batch.y[:, None], -1).sum() / B
        cache = dict(layers=layers, top=top, logp=logp, pooled=pooled, count=count)
        return float(loss), cache

    def loss(self, params, batch: Batch) -> float:
        return self.forward(params, batch)[0]

    # --------------------------------------------------------------- backward
    @staticmethod
    def _previous_state(hs, t):
        """h_{t-1}, the state entering step t; ``hs[0]`` is the initial state h_{-1} = 0."""
        return hs[t]

    @staticmethod
    def _outer(x, d):
        """sum over leading axes of outer products x_i (outer) d_i: (..., P), (..., Q) -> (P, Q)."""
        return x.reshape(-1, x.shape[-1]).T @ d.reshape(-1, d.shape[-1])

    def gradient(self, params, batch: Batch) -> dict[str, np.ndarray]:
        """dL/dparams by hand-written BPTT."""
        return self.loss_and_gradient(params, batch)[1]

    def loss_and_gradient(self, params, batch: Batch, *, return_adjoints: bool = False):
        """``(L, dL/dparams)`` by one forward pass and hand-written BPTT.

        With ``return_adjoints`` also returns ``{layer: dL/dh_t (T, B, H)}``,
        the total adjoint of each layer's state h_t.
        """
        c = self.config
        H = c.hidden_size
        m = batch.mask
        T, B = m.shape
        loss, cache = self.forward(params, batch)
        grads = {name: np.zeros_like(value) for name, value in params.items()}
        V = params["V"]

        # readout: dL/dlogits = (softmax - onehot) / B on kept terms
        if c.readout == "lm":
            dlogits = np.exp(cache["logp"])                     # (T, B, K)
            np.put_along_axis(dlogits, batch.y[..., None],
                              np.take_along_axis(dlogits, batch.y[..., None], -1) - 1.0, -1)
            dlogits *= m[..., None] / B
            grads["V"] = self._outer(cache["top"], dlogits)
            grads["c"] = dlogits.sum(axis=(0, 1))
            dtop = dlogits @ V.T                                # (T, B, H)
        else:
            dlogits = np.exp(cache["logp"])                     # (B, K)
            dlogits[np.arange(B), batch.y] -= 1.0
            dlogits /= B
            grads["V"] = self._outer(cache["pooled"], dlogits)
            grads["c"] = dlogits.sum(axis=0)
            dpooled = dlogits @ V.T                             # (B, H)
            dtop = m[..., None] * (dpooled / cache["count"][:, None])   # (T, B, H)

        adjoints = {}
        dabove = dtop                                           # dL/dh_t arriving from above
        for l in reversed(range(c.layers)):
            lc = cache["layers"][l]
            W, U = params[f"W{l}"], params[f"U{l}"]
            Ur, Uz, Uh = U[:, :H], U[:, H:2 * H], U[:, 2 * H:]
            hs, gates, ns, a_rz = lc["hs"], lc["gates"], lc["ns"], lc["a_rz"]
            dxp = np.zeros((T, B, 3 * H))                       # dL/d(x_t W + b)
            dU = grads[f"U{l}"]
            dh_all = np.zeros((T, B, H))
            dh_next = np.zeros((B, H))                          # dL/dh_t through step t + 1
            for t in reversed(range(T)):
                dh = dabove[t] + dh_next                        # total dL/dh_t
                dh_all[t] = dh
                h = self._previous_state(hs, t)                 # h_{t-1}
                r, z, n = gates[t, :, :H], gates[t, :, H:], ns[t]
                mt = m[t][:, None]
                # h_t = m h'_t + (1 - m) h_{t-1}
                dh_new = mt * dh
                dh_prev = (1.0 - mt) * dh
                # h'_t = (1 - z) n + z h_{t-1}
                dn = dh_new * (1.0 - z)
                dz = dh_new * (h - n)
                dh_prev += dh_new * z
                # n = tanh(a_h)
                da_h = dn * tanh_grad_from_output(n)            # (B, H)
                if c.reset == "before":
                    # a_h = x W_h + b_h + (r * h) U_h
                    drh = da_h @ Uh.T
                    dr = drh * h
                    dh_prev += drh * r
                    dU[:, 2 * H:] += self._outer(r * h, da_h)
                else:
                    # a_h = x W_h + b_h + r * q,  q = h U_h + bn
                    q = lc["qs"][t]
                    dr = da_h * q
                    dq = da_h * r
                    dU[:, 2 * H:] += self._outer(h, dq)
                    grads[f"bn{l}"] += dq.sum(axis=0)
                    dh_prev += dq @ Uh.T
                # r = g(a_r), z = g(a_z);  a_r = x W_r + h U_r + b_r, likewise a_z
                gp = self.gate_grad(a_rz[t], gates[t])          # (B, 2H)
                da_r = dr * gp[:, :H]
                da_z = dz * gp[:, H:]
                dU[:, :H] += self._outer(h, da_r)
                dU[:, H:2 * H] += self._outer(h, da_z)
                dh_prev += da_r @ Ur.T + da_z @ Uz.T
                dxp[t, :, :H], dxp[t, :, H:2 * H], dxp[t, :, 2 * H:] = da_r, da_z, da_h
                dh_next = dh_prev
            adjoints[l] = dh_all
            # xp = x W + b for all steps at once
            grads[f"W{l}"] = self._outer(lc["x"], dxp)
            grads[f"b{l}"] = dxp.sum(axis=(0, 1))
            dabove = dxp @ W.T                                  # (T, B, D_l) = dL/dx_t
        if c.embedding:
            # x_t = E[ids_t]: scatter-add each step's input adjoint to its token's row
            np.add.at(grads["E"], batch.x, dabove)
        if return_adjoints:
            return loss, grads, adjoints
        return loss, grads
