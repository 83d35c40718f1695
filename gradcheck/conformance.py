"""Forward conformance: does a user's layer compute the states a reference cell computes?

Some bugs leave the gradients self-consistent, so no gradient check can see
them: the seed question's ``rval[0]`` returns the first step's state where
every step's was meant.  Running the user's layer and a reference cell on the
same parameters and inputs, and comparing the states step by step, finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck.tolerance import Tolerance, agree

__all__ = ["ForwardComparison", "compare_states", "FORWARD_TOLERANCE"]

FORWARD_TOLERANCE = Tolerance(atol=1e-10, rtol=1e-8)


@dataclass
class ForwardComparison:
    """The user's states against the reference's.

    verdict: "pass" or "fail".
    message: one or two sentences for a person.
    user_shape, reference_shape: the two shapes.
    first_step: the first time step that differs (None when they agree).
    element: ``(t, b, unit)`` of the first differing element, with both values.
    matches_step: when the user returned one step's states, the reference step they equal.
    """

    verdict: str
    message: str
    user_shape: tuple
    reference_shape: tuple
    first_step: int | None = None
    element: tuple | None = None
    values: tuple | None = None
    matches_step: int | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "message": self.message,
                "user_shape": list(self.user_shape), "reference_shape": list(self.reference_shape),
                "first_step": self.first_step,
                "element": list(self.element) if self.element is not None else None,
                "values": list(self.values) if self.values is not None else None,
                "matches_step": self.matches_step}


def compare_states(user, reference, tol: Tolerance = FORWARD_TOLERANCE,
                   names=("layer", "reference")) -> ForwardComparison:
    """Compare ``user`` states with ``reference`` states ``(T, B, H)``, step by step."""
    user = np.asarray(user, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    a, b = names
    if user.shape != reference.shape:
        text = (f"shape mismatch: the {a} returns {user.shape} where the {b} returns "
                f"(T, B, H) = {reference.shape}")
        matches = None
        if user.shape == reference.shape[1:]:
            same = [t for t in range(reference.shape[0]) if agree(user, reference[t], tol).all()]
            if same:
                matches = same[0]
                text += (f"; it equals the {b}'s state at step {matches} alone, so every step "
                         f"after it is lost (a single-output scan indexed with [0]?)")
        return ForwardComparison("fail", text, user.shape, reference.shape, first_step=0,
                                 matches_step=matches)
    ok = agree(user, reference, tol)
    if ok.all():
        return ForwardComparison("pass", f"the {a}'s states equal the {b}'s at every step "
                                 f"(T = {reference.shape[0]})", user.shape, reference.shape)
    bad = np.argwhere(~ok)
    first = tuple(int(i) for i in bad[bad[:, 0].argmin()])
    t = first[0]
    values = (float(user[first]), float(reference[first]))
    text = (f"the states first diverge at step t = {t}, at element {list(first)}: "
            f"{a} = {values[0]:.10g}, {b} = {values[1]:.10g}")
    if t == 0:
        text += "; step 0 already differs, so the equations or conventions differ"
    return ForwardComparison("fail", text, user.shape, reference.shape, first_step=t,
                             element=first, values=values)


def _reference_states(config, params, x, mask):
    """The reference GRU's layer-0 states (T, B, H) for ``params`` named W0, U0, b0 (, bn0)."""
    from cells.gru import GRU
    from gradcheck.batch import Batch

    cell = GRU(config)
    T, B = mask.shape
    batch = Batch(x, np.zeros(B, dtype=np.int64), mask)
    full = cell.init_params(np.random.default_rng(0))   # readout parameters are unused here
    full.update(params)
    _, cache = cell.forward(full, batch)
    return cache["layers"][0]["states"][1:]


def map_to_reference(user_params: dict, prefix: str | None = None) -> dict:
    """User names (``gru_W`` or ``W``) -> the reference's layer-0 names (``W0``)."""
    mapped = {}
    for name, value in user_params.items():
        short = name[len(prefix) + 1:] if prefix and name.startswith(prefix + "_") else name
        if short in ("W", "U", "b", "bn"):
            mapped[f"{short}0"] = np.asarray(value, dtype=np.float64)
    missing = [n for n in ("W0", "U0", "b0") if n not in mapped]
    if missing:
        raise ValueError(f"cannot map the layer's parameters {', '.join(user_params)} onto the "
                         f"reference's W0, U0, b0 (missing {', '.join(missing)})")
    return mapped


def compare_to_reference(states_fn, user_params, *, hidden: int, steps: int, batch: int,
                         seed: int, mask: np.ndarray | None = None, prefix: str | None = None,
                         conventions: dict | None = None):
    """Run the user's layer and the reference GRU on the same parameters and inputs.

    states_fn: ``states_fn(x, mask)`` -> what the user's layer returns.
    user_params: the layer's parameters (names as the user's file has them).
    conventions: fixed ``reset``/``update``/``gate``; the others are tried in turn,
        and the convention whose states match longest is kept.
    Returns ``(ForwardComparison, reference config)``.
    """
    from cells.activations import GATES
    from cells.gru import RESETS, UPDATES, GRUConfig

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, batch, hidden))
    mask = np.ones((steps, batch)) if mask is None else mask
    user = np.asarray(states_fn(x, mask), dtype=np.float64)
    params = map_to_reference(user_params, prefix)
    fixed = conventions or {}
    if "bn0" in params:
        fixed = {**fixed, "reset": "after"}
    best = None
    for reset in ([fixed["reset"]] if "reset" in fixed else RESETS):
        for update in ([fixed["update"]] if "update" in fixed else UPDATES):
            for gate in ([fixed["gate"]] if "gate" in fixed else tuple(GATES)):
                config = GRUConfig(input_size=hidden, hidden_size=hidden, reset=reset,
                                   update=update, gate=gate, readout="mean")
                if reset == "after" and "bn0" not in params:
                    params = {**params, "bn0": np.zeros(hidden)}
                reference = _reference_states(config, params, x, mask)
                result = compare_states(user, reference)
                # the convention whose states match longest; among those that diverge at
                # the same step, the one with the most agreeing elements (a layer that
                # ignores the mask differs from its own convention at masked entries only,
                # from the others everywhere)
                score = (steps + 1 if result.passed else
                         result.first_step if result.matches_step is None else 0.5,
                         int(agree(user, reference, FORWARD_TOLERANCE).sum())
                         if user.shape == reference.shape else 0)
                if best is None or score > best[0]:
                    best = (score, result, config)
    result = best[1]
    if result.element is not None and mask[result.element[:2]] == 0:
        result.message += (f"; step {result.element[0]} of sequence {result.element[1]} is "
                           "masked (the reference carries the state over there): does the "
                           "layer apply the mask?")
    return result, best[2]
