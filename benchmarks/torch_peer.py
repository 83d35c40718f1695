"""The torch side of the benchmark's GRU check, importing torch alone.

``torch_case`` builds torch.nn.GRU with the project's 2-class readout; the
whole-process peer script (``benchmarks/run.py``, section a) imports it from
here, so that the torch process pays for torch's imports and nothing of the
project's (cells, gradcheck).  torch is imported when a case is built: the
benchmark runs its other sections without it.
"""

from __future__ import annotations

__all__ = ["SMALL", "CLASSES", "torch_case"]

SMALL = dict(steps=20, batch=8, input_size=16, hidden_size=32)
CLASSES = 2


def torch_case(steps, batch, input_size, hidden_size, seed=0):
    """torch.nn.GRU(D, H) in float64 with a 2-class readout, and a loss of its parameters.

    Returns ``(loss_fn, inputs)``: ``loss_fn(*inputs)`` is the mean over sequences of
    the summed per-step cross-entropy, the project's readout "lm".
    """
    import torch
    from torch.func import functional_call

    torch.manual_seed(seed)
    gru = torch.nn.GRU(input_size, hidden_size).double()
    x = torch.randn(steps, batch, input_size, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (steps, batch))
    names = [n for n, _ in gru.named_parameters()]
    weights = [p.detach().clone().requires_grad_(True) for p in gru.parameters()]
    V = (torch.randn(hidden_size, CLASSES, dtype=torch.float64) / hidden_size ** 0.5)
    c = torch.zeros(CLASSES, dtype=torch.float64)

    def loss_fn(*ps):
        out, _ = functional_call(gru, dict(zip(names, ps[:4])), (x,))
        logits = out @ ps[4] + ps[5]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, CLASSES), y.reshape(-1),
                                               reduction="sum")
        return ce / batch

    inputs = tuple(weights) + (V.requires_grad_(True), c.requires_grad_(True))
    return loss_fn, inputs, (x, y)
