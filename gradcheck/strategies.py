"""Hypothesis strategies for cell configurations, masks and truncations.

Use them to fuzz a cell over shapes, masks and truncation lengths::

    from hypothesis import given
    from gradcheck import strategies as gst

    @given(gst.gru_configs(max_layers=2), gst.masks(steps=5, batch=3))
    def test_my_cell(config, mask): ...

Every strategy takes keyword-only arguments, validated when it is built.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from gradcheck.masks import mask_from_lengths
from gradcheck.truncation import FULL, TRUNCATIONS, Truncation

__all__ = ["gru_configs", "masks", "truncations", "seeds"]

_RESETS = ("before", "after")
_UPDATES = ("old", "new")
_GATES = ("sigmoid", "hard")
_READOUTS = ("lm", "mean")
_MASK_KINDS = ("lengths", "random")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} must be an integer")
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")


def _check_range(low_name, low, high_name, high, minimum):
    _check_int(low_name, low, minimum)
    _check_int(high_name, high, minimum)
    if low > high:
        raise ValueError(f"{low_name}={low} is larger than {high_name}={high}")


def _check_choices(name, values, allowed):
    if isinstance(values, str):                 # a string would be drawn from letter by letter
        raise TypeError(f"{name}={values!r} must be a list of names, e.g. {name}=[{values!r}]")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} is empty: give at least one of {', '.join(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name} holds {bad[0]!r}, not one of {', '.join(allowed)}")
    return values


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``np.random.default_rng``; shrink towards 0."""
    return st.integers(min_value=0, max_value=2 ** 32 - 1)


def gru_configs(*, min_layers: int = 1, max_layers: int = 2, min_size: int = 1,
                max_size: int = 4, min_classes: int = 2, resets=_RESETS, updates=_UPDATES,
                gates=_GATES, readouts=_READOUTS, embedding: bool | None = None,
                truncation=FULL):
    """Strategy for ``cells.gru.GRUConfig``.

    min_layers: the fewest stacked layers (at least 1).
    max_layers: the most stacked layers.
    min_size: the smallest input, hidden and vocabulary size (at least 1).
    max_size: the largest input, hidden, class and vocabulary size (classes: at least
        ``min_classes``).
    min_classes: the fewest readout classes (at least 2: one class has no gradient).
    resets: the reset conventions to draw from.
    updates: the update conventions to draw from ("old": z keeps the old state, "new").
    gates: the gate activations to draw from.
    readouts: the readouts to draw from.
    embedding: True or False fixes it; None draws it.
    truncation: a Truncation every config gets, or a strategy of them (``truncations(steps=T)``).
    """
    from cells.gru import GRUConfig

    _check_range("min_layers", min_layers, "max_layers", max_layers, 1)
    _check_range("min_size", min_size, "max_size", max_size, 1)
    _check_int("min_classes", min_classes, 2)
    resets = _check_choices("resets", resets, _RESETS)
    updates = _check_choices("updates", updates, _UPDATES)
    gates = _check_choices("gates", gates, _GATES)
    readouts = _check_choices("readouts", readouts, _READOUTS)
    if embedding not in (None, True, False):
        raise ValueError(f"embedding={embedding!r} must be True, False or None")
    if isinstance(truncation, Truncation):
        trunc = st.just(truncation)
    elif isinstance(truncation, st.SearchStrategy):
        trunc = truncation
    else:
        raise TypeError(f"truncation={truncation!r} must be a Truncation or a strategy of them")
    size = st.integers(min_size, max_size)

    @st.composite
    def build(draw):
        tr = draw(trunc)
        return GRUConfig(
            input_size=draw(size), hidden_size=draw(size),
            layers=draw(st.integers(min_layers, max_layers)),
            classes=draw(st.integers(min_classes, max(min_classes, max_size))),
            vocab=draw(size),
            reset=draw(st.sampled_from(resets)), update=draw(st.sampled_from(updates)),
            gate=draw(st.sampled_from(gates)),
            readout=draw(st.sampled_from(readouts)),
            embedding=draw(st.booleans()) if embedding is None else embedding,
            truncate=tr.k, truncation=tr.kind if tr.kind != "full" else "window")
    return build()


def masks(*, steps: int, batch: int, kind: str | None = None, min_kept: int = 1):
    """Strategy for (T, B) float64 masks of 0 and 1.

    steps: T, the number of time steps (at least 1).
    batch: B, the number of sequences (at least 1).
    kind: "lengths" (right padding, lengths 0 .. T), "random" (any 0/1 pattern), None for either.
    min_kept: the fewest kept (1) entries in the whole mask, 0 to T B (default 1: with
        nothing kept the loss is constant, a check that cannot fail, which
        ``check_gradients`` refuses).
    """
    _check_int("steps", steps, 1)
    _check_int("batch", batch, 1)
    _check_int("min_kept", min_kept, 0)
    if min_kept > steps * batch:
        raise ValueError(f"min_kept={min_kept} is larger than steps * batch={steps * batch}")
    kinds = _MASK_KINDS if kind is None else _check_choices("kind", [kind], _MASK_KINDS)

    # built with at least min_kept entries kept, not filtered (a filter rejects most
    # draws when min_kept is near T B): a draw that keeps too few is topped up, in a
    # drawn order, to a drawn count between min_kept and T B (not to min_kept itself,
    # which would pile the draws up there)
    def target(draw, kept):
        return kept if kept >= min_kept else draw(st.integers(min_kept, steps * batch))

    @st.composite
    def from_lengths(draw):
        lengths = np.array(draw(st.lists(st.integers(0, steps), min_size=batch,
                                          max_size=batch)), dtype=np.int64)
        goal = target(draw, int(lengths.sum()))
        for b in draw(st.permutations(range(batch))):       # lengthen sequences in turn
            lengths[b] += min(steps - lengths[b], max(0, goal - int(lengths.sum())))
        return mask_from_lengths(lengths, steps)

    @st.composite
    def from_bits(draw):
        bits = np.array(draw(st.lists(st.sampled_from([0, 1]), min_size=steps * batch,
                                      max_size=steps * batch)), dtype=np.float64)
        missing = target(draw, int(bits.sum())) - int(bits.sum())
        if missing:
            off = np.flatnonzero(bits == 0)
            bits[off[draw(st.permutations(range(len(off))))[:missing]]] = 1.0
        return bits.reshape(steps, batch)

    options = []
    if "lengths" in kinds:
        options.append(from_lengths())
    if "random" in kinds:
        options.append(from_bits())
    return st.one_of(options)


def truncations(*, steps: int, kinds=TRUNCATIONS, include_full: bool = True):
    """Strategy for ``gradcheck.truncation.Truncation``: k = 1, k between, and k >= T.

    steps: T, the sequence length the truncations are meant for (at least 1).
    kinds: the semantics to draw from, "window" and/or "tail".
    include_full: also draw full BPTT (k = -1).
    """
    _check_int("steps", steps, 1)
    kinds = _check_choices("kinds", kinds, TRUNCATIONS)
    if not isinstance(include_full, (bool, np.bool_)):
        raise TypeError(f"include_full={include_full!r} must be True or False")
    k = st.one_of(st.just(1), st.integers(1, max(1, steps - 1)), st.integers(steps, steps + 3))
    drawn = st.builds(Truncation, st.sampled_from(kinds), k)
    return st.one_of(st.just(FULL), drawn) if include_full else drawn
