"""Check a built-in cell from its configuration: draw parameters and data, run the oracles."""

from __future__ import annotations

import dataclasses
import os
import shlex

import numpy as np

from gradcheck.check import ORACLES, CheckResult, check_gradients, parse_oracles
from gradcheck.masks import MASKS, make_mask
from gradcheck.sparse_rows import EMBEDDING_SAMPLE
from gradcheck.tolerance import agree, resolve_tolerance

__all__ = ["check_builtin", "reproduce_command", "checking_options", "NUMERIC_ONLY"]

# the options only the numeric oracle reads (--directions goes with --mode fast): the
# CLI refuses them for a check without that oracle, and reproduce lines leave them out
NUMERIC_ONLY = ("--numeric", "--max-elements", "--mode", "--embedding-sample")


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _parameter_count(cell_class, config) -> int:
    """How many parameter elements ``cell_class(config)`` has, without listing the specs
    of every layer: layers above the first all have the same shapes, so the count is
    that of one layer plus (L - 1) times what a second layer adds."""
    def count(cfg):
        return sum(s.size for s in cell_class(cfg).param_specs())
    layers = getattr(config, "layers", 1)
    one = count(dataclasses.replace(config, layers=1) if layers > 1 else config)
    if layers == 1:
        return one
    return one + (layers - 1) * (count(dataclasses.replace(config, layers=2)) - one)


def _refuse_if_too_large(cell_class, config, steps, batch) -> None:
    """ValueError when a check would need more than half the machine's memory (before
    the cell, its parameters or its data exist)."""
    hidden = getattr(config, "hidden_size", 1)
    layers = getattr(config, "layers", 1)
    width = max(getattr(config, "input_size", 1), hidden, getattr(config, "classes", 1))
    # parameters and their gradients (several copies), and the forward cache of every step
    need = 8 * (12 * _parameter_count(cell_class, config)
                + 24 * steps * batch * layers * 4 * width)
    budget = _physical_memory() // 2
    if need > budget:
        raise ValueError(
            f"this check would need about {need / 2**30:.1f} GiB, more than half this machine's "
            f"{2 * budget / 2**30:.1f} GiB: choose smaller sizes")


def _refuse_dormant_bug(bug, entry, cfg, params, batch, oracles, atol, rtol) -> None:
    """ValueError when the broken cell's bug cannot show in this check.

    Three ways: the analytic oracle is left out; the configuration or data never
    exercise the bug (the broken cell's ``dormant``, which names the options that
    would); or, on this draw, the bug leaves the gradient within the tolerance of the
    reference cell's, and the loss too after a gradient (a one-step sequence, a tail
    window over masked steps, a hard gate that never saturates, ...).  Fresh
    instances are compared, so that a cell with a forward cache starts clean.
    """
    if "analytic" not in oracles:
        raise ValueError(f"bug {bug!r} is in the hand-written (analytic) gradient: include the "
                         f"analytic oracle (oracles are {', '.join(oracles)})")
    broken, reference = entry.make(cfg, bug), entry.make(cfg)
    dormant = getattr(broken, "dormant", None)
    reason = dormant(batch) if dormant is not None else None
    if reason:
        raise ValueError(f"bug {bug!r} cannot change the gradient in this check: {reason}")
    wrong, true = broken.gradient(params, batch), reference.gradient(params, batch)
    same_loss = broken.loss(params, batch) == reference.loss(params, batch)
    if same_loss and all(agree(wrong[name], true[name],
                               resolve_tolerance(np.asarray(value).dtype, atol, rtol)).all()
                         for name, value in params.items()):
        raise ValueError(
            f"bug {bug!r} does not change the gradient on this draw: every element agrees "
            "with the reference cell's within the tolerance, so no check could see it; try "
            "more steps, another --seed, or the options its description names "
            "('gradcheck list')")


def checking_options(*, oracles, atol=None, rtol=None, mode="exact", numeric_method="batched",
                     directions=2, max_elements=None, embedding_sample=EMBEDDING_SAMPLE,
                     embedding=False) -> list[str]:
    """The CLI options, beyond the cell and its sizes, that repeat how a check was run
    (those left at their defaults are omitted, and so are those the check did not read,
    which the CLI would refuse: the numeric oracle's without it)."""
    given = {}
    if tuple(oracles) != ORACLES:
        given["--oracles"] = ",".join(oracles)
    if mode != "exact":
        given["--mode"] = mode
        if directions != 2:
            given["--directions"] = str(directions)
    if numeric_method != "batched":
        given["--numeric"] = numeric_method
    if max_elements is not None:
        given["--max-elements"] = str(max_elements)
    if embedding and embedding_sample != EMBEDDING_SAMPLE:
        given["--embedding-sample"] = "all" if embedding_sample is None else str(embedding_sample)
    if "numeric" not in oracles:                                # and --directions with --mode
        given = {opt: value for opt, value in given.items()
                 if opt not in NUMERIC_ONLY and opt != "--directions"}
    for opt, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not isinstance(value, dict):
            given[opt] = repr(float(value))
    return [part for opt, value in given.items() for part in (opt, value)]


def reproduce_command(name, config: dict, *, steps, batch, seed, mask="none", bug=None,
                      backend="pytensor", **checking) -> str:
    """The CLI command that repeats this check exactly; ``checking``: the keyword
    arguments of ``checking_options``."""
    flag = {"input_size": "--input", "hidden_size": "--hidden"}
    args = ["gradcheck", "check", name, "--steps", str(steps), "--batch", str(batch),
            "--seed", str(seed)]
    for key, value in config.items():
        if (key == "vocab" and not config.get("embedding")) or (
                key == "truncation" and config.get("truncate", -1) == -1):
            continue                    # not read by this configuration: the CLI refuses them
        opt = flag.get(key, "--" + key.replace("_", "-"))
        if isinstance(value, bool):
            if value:
                args.append(opt)
        else:
            args += [opt, str(value)]
    if mask != "none":
        args += ["--mask", mask]
    if bug is not None:
        args += ["--bug", bug]
    if backend != "pytensor" and "autodiff" in checking.get("oracles", ORACLES):
        args += ["--backend", backend]
    args += checking_options(embedding=bool(config.get("embedding")), **checking)
    return shlex.join(args)


def check_builtin(name: str = "gru", *, steps: int = 5, batch: int = 3, seed: int | None = 0,
                  mask: str = "none", oracles=ORACLES, atol=None, rtol=None,
                  backend: str = "pytensor", bug: str | None = None,
                  max_elements: int | None = None, mode: str = "exact",
                  numeric_method: str = "batched", directions: int = 2,
                  embedding_sample: int | None = EMBEDDING_SAMPLE, **config) -> CheckResult:
    """Check the built-in cell ``name`` on seeded random parameters and data.

    name: a key of ``cells.CELLS`` ("gru").
    steps: sequence length T.
    batch: batch size B.
    seed: seeds every random draw; ``None`` draws a fresh seed, recorded in the result.
    mask: "none", "lengths" (right padding) or "random" (arbitrary 0/1), see gradcheck.masks.
    oracles: at least two of "analytic", "numeric", "autodiff".
    atol: absolute tolerance override (scalar or ``{dtype: value}``).
    rtol: relative tolerance override (scalar or ``{dtype: value}``).
    backend: the symbolic backend, "pytensor" or "theano".
    bug: check one of the cell's deliberately broken variants instead (``gradcheck list``).
    mode, numeric_method, directions, embedding_sample: see ``gradcheck.check_gradients``.
    max_elements: numeric oracle on at most this many elements per parameter; by default
        all of them, or a sample of 4096 when the cell has over 50,000 parameters.
    config: the cell's configuration fields (see its config class).
    """
    from cells import get_cell

    entry = get_cell(name)
    _positive("steps", steps)
    _positive("batch", batch)
    oracles = parse_oracles(oracles)
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r} is not one of {', '.join(MASKS)}")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2 ** 32))
    cfg = entry.config_class(**config)
    _refuse_if_too_large(entry.numpy_class, cfg, steps, batch)
    cell = entry.make(cfg, bug)
    specs = cell.param_specs()
    if max_elements is None and sum(s.size for s in specs) > 50_000:
        max_elements = 4096
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    data = cell.sample_batch(rng, steps, batch, make_mask(mask, rng, steps, batch))
    if bug is not None:
        _refuse_dormant_bug(bug, entry, cfg, params, data, oracles, atol, rtol)
    symbolic = entry.make_symbolic(cfg, backend) if "autodiff" in oracles else None
    info = {"name": name, **cfg.as_dict(), "steps": steps, "batch": batch, "mask": mask}
    if bug is not None:
        info["bug"] = bug
    result = check_gradients(cell, params, data, symbolic=symbolic, oracles=oracles,
                             atol=atol, rtol=rtol, seed=seed, cell_info=info,
                             max_elements=max_elements, mode=mode,
                             numeric_method=numeric_method, directions=directions,
                             embedding_sample=embedding_sample)
    k = getattr(cfg, "truncate", -1)
    if k != -1 and k >= (steps - 1 if cfg.truncation == "window" else steps):
        result.notes.append(f"truncate={k} reaches every step of this T={steps} sequence "
                            f"({cfg.truncation}): the truncated gradient is the full one here")
    result.command = reproduce_command(name, cfg.as_dict(), steps=steps, batch=batch,
                                       seed=seed, mask=mask, bug=bug, backend=backend,
                                       oracles=oracles, atol=atol, rtol=rtol, mode=mode,
                                       numeric_method=numeric_method, directions=directions,
                                       max_elements=max_elements,
                                       embedding_sample=embedding_sample)
    return result
