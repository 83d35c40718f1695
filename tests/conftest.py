"""Shared fixtures: every variant of the reference GRU, seeded data."""

import itertools

import numpy as np
import pytest

from cells.gru import GRUConfig

FIELDS = ("reset", "gate", "readout", "embedding", "layers")
AXES = (("before", "after"), ("sigmoid", "hard"), ("lm", "mean"), (False, True), (1, 2))
UPDATES = ("old", "new")


def _update_of(choices):
    """The update convention of a variant: "new" where an odd number of the other five
    axes take their second value.  A half of the 64 combinations, so the 32 variants
    stay 32, yet every pair of axes (update included) meets in all four combinations."""
    return UPDATES[sum(axis.index(c) for axis, c in zip(AXES, choices)) % 2]


VARIANTS = [dict(zip(FIELDS, choices), update=_update_of(choices))
            for choices in itertools.product(*AXES)]


def variant_id(v):
    return "-".join([v["reset"], v["update"], v["gate"], v["readout"],
                     "emb" if v["embedding"] else "dense", f"L{v['layers']}"])


@pytest.fixture(params=VARIANTS, ids=variant_id)
def config(request):
    return GRUConfig(**request.param)


def make_case(cell, seed=0, steps=5, batch=3, mask=None):
    """Seeded parameters and batch for ``cell``."""
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    data = cell.sample_batch(rng, steps, batch, mask)
    return params, data


# Property tests: derandomized, so every CI run draws the same examples (the
# examples, and the seeds inside them, are printed on failure); no deadline,
# since the first example of a structure compiles its symbolic graph.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "gradcheck", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("gradcheck")


# False alarms and misses, counted by the property and zoo tests and printed at the
# end of the run (the README quotes these numbers).
ROBUSTNESS = {"correct checks": 0, "false alarms": 0, "broken checks": 0, "misses": 0}


def count_correct(result):
    """Record a check of a correct cell; return whether it (rightly) passed."""
    ROBUSTNESS["correct checks"] += 1
    ROBUSTNESS["false alarms"] += not result.passed
    return result.passed


def count_broken(result):
    """Record a check of a broken cell; return whether it (rightly) failed."""
    ROBUSTNESS["broken checks"] += 1
    ROBUSTNESS["misses"] += result.passed
    return not result.passed


def pytest_terminal_summary(terminalreporter):
    if ROBUSTNESS["correct checks"] or ROBUSTNESS["broken checks"]:
        r = ROBUSTNESS
        terminalreporter.write_sep("-", "gradcheck: false alarms and misses")
        terminalreporter.write_line(
            f"{r['correct checks']} checks of correct cells, {r['false alarms']} false alarms; "
            f"{r['broken checks']} checks of broken cells, {r['misses']} misses")
