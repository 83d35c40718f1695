"""Time gradcheck against torch on GRUs of the same size, in one run.

Sections (``--sections a,b,c,d,e,f``):

a. exact gradient check at ~4,800 parameters (torch.nn.GRU(16, 32), T=20, B=8,
   a 2-class readout) against ``torch.autograd.gradcheck`` (exact mode);
b. fast mode (random directions) against ``gradcheck(fast_mode=True)``;
c. NumPy forward + backward against torch GRU forward + backward at
   (T, B, D, H) = (20, 8, 16, 32) and (50, 32, 128, 256);
d. the symbolic (PyTensor) oracle, cold (a new process) and warm;
e. how the exact check's time grows with T, H and the parameter count;
f. the LSTM's forward + backward against torch.nn.LSTM at the sizes of (c).

Torch sections run only when ``import torch`` works.  Every time is a median
over ``--repeats`` runs after one untimed warm-up call (the exact torch
gradcheck takes minutes: ``--torch-exact-repeats``, 1 by default, no warm-up).

Run from the repository root: ``python benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# the project as installed (`pip install .`, with its compiled kernels) where it is, else
# this source tree: appended, so that an install comes first (an in-place source tree
# without a built extension would run without the kernels)
sys.path.append(str(Path(__file__).resolve().parents[1]))

from cells import gate_kernels  # noqa: E402
from cells.gru import GRU, GRUConfig  # noqa: E402
from cells.lstm import LSTM, LSTMConfig  # noqa: E402
from gradcheck.check import check_gradients  # noqa: E402
from gradcheck.compare import compare_gradients  # noqa: E402
from gradcheck.directional import directional_check  # noqa: E402
from gradcheck.finite_differences import numeric_gradient  # noqa: E402
from gradcheck.process_memory import keep_freed_memory  # noqa: E402
from gradcheck.tolerance import resolve_tolerance  # noqa: E402
from benchmarks.torch_peer import CLASSES, SMALL, torch_case  # noqa: E402

# where the project's modules were imported from: site-packages, or the source tree
PROJECT_DIR = Path(gate_kernels.__file__).resolve().parents[1]

__all__ = ["main", "exact_check", "fast_check", "median_time"]

try:
    import torch
except ImportError:                                     # the torch sections are skipped
    torch = None

BIG = dict(steps=50, batch=32, input_size=128, hidden_size=256)
# a timed sample of a fast call averages enough calls to last this long (seconds)
SAMPLE_SECONDS = 0.05


# ------------------------------------------------------------------ timing
def median_time(fn, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn()`` in seconds.

    fn: the callable to time.
    repeats: how many timed samples.
    warmup: make one untimed call first; it also sets how many calls one sample
        averages: enough for ``SAMPLE_SECONDS`` (timeit's autorange), so that
        sub-millisecond calls are not timed cold one by one.  Without warm-up
        every sample is one call (for the slow cases).
    """
    number = 1
    if warmup:
        start = time.perf_counter()
        fn()
        number = max(1, int(SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-9)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def fmt(seconds: float) -> str:
    """A time with a unit that keeps three significant digits."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def row(label: str, ours: float, theirs: float | None, note: str = "") -> dict:
    """Print one comparison line (ratio = torch / ours: > 1 means gradcheck is faster)."""
    ratio = theirs / ours if theirs else None
    text = f"  {label:<44} gradcheck {fmt(ours):>10}"
    if theirs is not None:
        text += f"   torch {fmt(theirs):>10}   torch/gradcheck {ratio:7.2f}x"
    print(text + (f"   {note}" if note else ""))
    return {"label": label, "gradcheck_s": ours, "torch_s": theirs, "ratio": ratio, "note": note}


# ------------------------------------------------------------ project side
def project_case(steps, batch, input_size, hidden_size, seed=0):
    """A torch-convention GRU (reset after, update old), its parameters and a batch.

    steps: T.
    batch: B.
    input_size: D.
    hidden_size: H.
    seed: seeds parameters and data.
    """
    cell = GRU(GRUConfig(input_size=input_size, hidden_size=hidden_size, classes=CLASSES,
                         reset="after", update="old"))
    rng = np.random.default_rng(seed)
    params = cell.init_params(rng)
    return cell, params, cell.sample_batch(rng, steps, batch)


def exact_check(cell, params, batch, method="batched"):
    """The exact check as recommended for check_gradients: analytic against numeric.

    cell: the cell.
    params: its parameters.
    batch: the batch.
    method: the numeric oracle's method ("batched", "central" or "complex").

    Analytic gradient, the determinism re-check of the loss, every element's
    numeric derivative, then every parameter compared (no localisation).
    Returns True when every parameter passes.
    """
    loss, analytic = cell.loss_and_gradient(params, batch)
    again = cell.loss(params, batch)
    numeric = numeric_gradient(cell, params, batch, method=method)
    ok = again == loss
    for spec in cell.param_specs():
        tol = resolve_tolerance(np.float64)
        comp = compare_gradients(spec, ("analytic", "numeric"), analytic[spec.name],
                                 numeric[spec.name].value, tol, numeric[spec.name].kinks)
        ok = ok and comp.passed
    return ok


def fast_check(cell, params, batch, method="central"):
    """Fast mode: analytic gradient, then K = 2 Gaussian directions per gate block.

    cell: the cell.
    params: its parameters.
    batch: the batch.
    method: "central" or "complex".
    """
    loss, analytic = cell.loss_and_gradient(params, batch)
    return directional_check(cell, params, batch, analytic, method=method).passed


# -------------------------------------------------------------- torch side
def same_function_check(loss_fn, inputs, data, hidden_size):
    """|L_torch - L_gradcheck| with torch's weights mapped onto the project's GRU.

    torch keeps b_ih and b_hh; the project folds b_hr, b_hz into b and keeps b_hn as bn.
    """
    w_ih, w_hh, b_ih, b_hh, V, c = [t.detach().numpy() for t in inputs]
    x, y = data
    H = hidden_size
    cell = GRU(GRUConfig(input_size=w_ih.shape[1], hidden_size=H, classes=CLASSES,
                         reset="after"))
    params = {"W0": w_ih.T.copy(), "U0": w_hh.T.copy(),
              "b0": b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H)]), "bn0": b_hh[2 * H:].copy(),
              "V": V, "c": c}
    from gradcheck.batch import Batch
    batch = Batch(x.numpy(), y.numpy(), np.ones(y.shape))
    with torch.no_grad():
        return abs(float(loss_fn(*inputs)) - cell.loss(params, batch))


def torch_fwd_bwd(loss_fn, inputs):
    """One forward and backward pass: the gradients of the loss with respect to inputs."""
    return torch.autograd.grad(loss_fn(*inputs), inputs)


def torch_module_passes(inputs, data, size):
    """The loss as a torch user writes it, for section (c): ``gru(x)`` on an nn.GRU holding
    ``inputs``' weights (``functional_call``, which gradcheck needs, measured 2 to 7%
    slower).  Returns ``(fwd_bwd, fwd)``: the gradients of every parameter; the loss."""
    x, y = data
    gru = torch.nn.GRU(size["input_size"], size["hidden_size"]).double()
    with torch.no_grad():
        for p, value in zip(gru.parameters(), inputs[:4]):
            p.copy_(value)
    V, c = inputs[4], inputs[5]
    params = list(gru.parameters()) + [V, c]

    def loss():
        out, _ = gru(x)
        logits = out @ V + c
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, CLASSES), y.reshape(-1),
                                               reduction="sum")
        return ce / size["batch"]
    return (lambda: torch.autograd.grad(loss(), params)), loss


# ---------------------------------------------------------------- sections
CLI_EXACT = ["check", "gru", "--steps", "20", "--batch", "8", "--input", "16", "--hidden", "32",
             "--classes", "2", "--reset", "after", "--oracles", "analytic,numeric"]

TORCH_EXACT_SNIPPET = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from benchmarks.torch_peer import SMALL, torch_case
loss_fn, inputs, _ = torch_case(**SMALL)
assert torch.autograd.gradcheck(loss_fn, inputs)
"""


def process_time(argv, repeats: int) -> float:
    """Median wall time of running ``argv`` as a new process (it must exit 0).

    argv: the command.
    repeats: how many runs.
    """
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_DIR))
    # Python's default: the first run writes the modules' bytecode, the others read it,
    # as an installed command's (pip compiles it) would; PYTHONDONTWRITEBYTECODE=1 (set
    # on some machines) would have every run compile the project's modules again
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def section_a(args, out):
    print("\n(a) exact gradient check, GRU(16, 32), T=20, B=8")
    cell, params, batch = project_case(**SMALL)
    n = sum(v.size for v in params.values())
    res = [row(f"exact, batched numeric ({n} params)",
               median_time(lambda: exact_check(cell, params, batch), args.repeats), None)]
    scalar = median_time(lambda: check_gradients(cell, params, batch, oracles="analytic,numeric",
                                                 numeric_method="central", localise=False),
                         1, warmup=False)
    res.append(row("exact, one element at a time (1 run)", scalar, None))
    root = Path(__file__).resolve().parents[1]
    # whole processes: what a user runs (interpreter, imports, the check, the report)
    ours_process = process_time([sys.executable, str(PROJECT_DIR / "cli.py")] + CLI_EXACT,
                                args.repeats)
    res.append(row("whole process: gradcheck " + " ".join(CLI_EXACT[:2]) + " ...", ours_process,
                   None))
    if torch is not None and not args.skip_torch_exact:
        loss_fn, inputs, _ = torch_case(**SMALL)
        m = sum(t.numel() for t in inputs)
        theirs = median_time(lambda: torch.autograd.gradcheck(loss_fn, inputs),
                             args.torch_exact_repeats, warmup=False)
        res[0] = row(f"exact vs torch gradcheck ({m} params)", res[0]["gradcheck_s"], theirs)
        res[1] = row("one at a time vs torch gradcheck", scalar, theirs)
        theirs_process = process_time([sys.executable, "-c", TORCH_EXACT_SNIPPET, str(root)],
                                      args.torch_exact_repeats)
        res[2] = row("whole process vs torch script", ours_process, theirs_process)
    out["a"] = res


def section_b(args, out):
    print("\n(b) fast mode, GRU(16, 32), T=20, B=8")
    cell, params, batch = project_case(**SMALL)
    theirs = None
    if torch is not None:
        loss_fn, inputs, _ = torch_case(**SMALL)
        start = time.perf_counter()
        torch.autograd.gradcheck(loss_fn, inputs, fast_mode=True)
        print(f"  torch fast_mode first call (not in the ratio): {fmt(time.perf_counter() - start)}")
        theirs = median_time(lambda: torch.autograd.gradcheck(loss_fn, inputs, fast_mode=True),
                             args.repeats)
    out["b"] = [
        row("fast, central directions", median_time(
            lambda: fast_check(cell, params, batch), args.repeats), theirs),
        row("fast, complex-step directions", median_time(
            lambda: fast_check(cell, params, batch, "complex"), args.repeats), theirs),
    ]


def section_c(args, out):
    print("\n(c) forward + backward (NumPy hand BPTT against torch autograd)")
    res = []
    for size in (SMALL, BIG):
        label = "T={steps} B={batch} D={input_size} H={hidden_size}".format(**size)
        cell, params, batch = project_case(**size)
        ours = median_time(lambda: cell.loss_and_gradient(params, batch), args.repeats)
        ours_fwd = median_time(lambda: cell.loss(params, batch), args.repeats)
        theirs = theirs_fwd = None
        if torch is not None:
            loss_fn, inputs, data = torch_case(**size)
            diff = same_function_check(loss_fn, inputs, data, size["hidden_size"])
            fwd_bwd, fwd = torch_module_passes(inputs, data, size)
            with torch.no_grad():
                same = abs(float(fwd()) - float(loss_fn(*inputs)))
            theirs = median_time(fwd_bwd, args.repeats)
            with torch.no_grad():
                theirs_fwd = median_time(fwd, args.repeats)
            print(f"  {label}: same function as torch, |loss difference| = {diff:.1e} "
                  f"(torch's module against its functional form: {same:.1e})")
        res.append(row(f"fwd+bwd {label}", ours, theirs))
        res.append(row(f"fwd only {label}", ours_fwd, theirs_fwd))
    out["c"] = res
    if not args.default_malloc:
        # the same section in a new process that leaves glibc's malloc as it is
        print("  the same in a new process with glibc's default malloc thresholds:")
        done = subprocess.run([sys.executable, __file__, "--sections", "c", "--default-malloc",
                               "--repeats", str(args.repeats)], capture_output=True, text=True,
                              check=True)
        lines = done.stdout.split("(c) forward + backward")[-1].splitlines()[1:]
        print("\n".join("  " + line for line in lines if line.strip().startswith("fwd")))


def lstm_cases(steps, batch, input_size, hidden_size, seed=0):
    """The project's LSTM and an nn.LSTM holding the same weights, on the same data.

    torch's gate blocks are i | f | g | o, the project's i | f | o | c (g = c, the
    candidate); torch keeps b_ih and b_hh, the project their sum b.  Returns
    ``(cell, params, batch, fwd_bwd, fwd, difference)``: torch's two passes as a
    torch user writes them, and |L_torch - L_gradcheck| at those weights.
    """
    from gradcheck.batch import Batch
    H = hidden_size
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(input_size, H).double()
    V = torch.randn(H, CLASSES, dtype=torch.float64, requires_grad=True)
    c = torch.randn(CLASSES, dtype=torch.float64, requires_grad=True)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(steps, batch, input_size)))
    y = torch.from_numpy(rng.integers(0, CLASSES, size=(steps, batch)))
    params = list(lstm.parameters()) + [V, c]

    def loss():
        out, _ = lstm(x)
        ce = torch.nn.functional.cross_entropy((out @ V + c).reshape(-1, CLASSES),
                                               y.reshape(-1), reduction="sum")
        return ce / batch

    w_ih, w_hh, b_ih, b_hh = [t.detach().numpy() for t in lstm.parameters()]
    order = np.concatenate([np.arange(0, 2 * H), np.arange(3 * H, 4 * H),
                            np.arange(2 * H, 3 * H)])       # i f g o -> i f o g
    cell = LSTM(LSTMConfig(input_size=input_size, hidden_size=H, classes=CLASSES))
    ours = {"W0": w_ih[order].T.copy(), "U0": w_hh[order].T.copy(), "b0": (b_ih + b_hh)[order],
            "V": V.detach().numpy(), "c": c.detach().numpy()}
    data = Batch(x.numpy(), y.numpy(), np.ones((steps, batch)))
    with torch.no_grad():
        difference = abs(float(loss()) - cell.loss(ours, data))
    return (cell, ours, data, lambda: torch.autograd.grad(loss(), params), loss, difference)


def section_f(args, out):
    print("\n(f) LSTM forward + backward (NumPy hand BPTT against torch.nn.LSTM)")
    if torch is None:
        print("  torch is not installed: skipped")
        return
    res = []
    for size in (SMALL, BIG):
        label = "T={steps} B={batch} D={input_size} H={hidden_size}".format(**size)
        cell, params, batch, fwd_bwd, fwd, diff = lstm_cases(**size)
        print(f"  {label}: same function as torch, |loss difference| = {diff:.1e}")
        ours = median_time(lambda: cell.loss_and_gradient(params, batch), args.repeats)
        theirs = median_time(fwd_bwd, args.repeats)
        res.append(row(f"LSTM fwd+bwd {label}", ours, theirs))
    out["f"] = res


SYMBOLIC_SNIPPET = """
import time, sys
start = time.perf_counter()
import numpy as np
from cells import get_cell
from cells.gru import GRUConfig
entry = get_cell("gru")
cfg = GRUConfig(input_size=16, hidden_size=32, classes=2, reset="after")
cell, sym = entry.make(cfg), entry.make_symbolic(cfg)
rng = np.random.default_rng(0)
params = cell.init_params(rng)
batch = cell.sample_batch(rng, 20, 8)
imported = time.perf_counter()
sym.loss_and_gradient(params, batch)
first = time.perf_counter()
times = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    sym.loss_and_gradient(params, batch)
    times.append(time.perf_counter() - t)
print(imported - start, first - imported, sorted(times)[len(times) // 2])
"""


def section_d(args, out):
    print("\n(d) symbolic (PyTensor) oracle, GRU(16, 32), T=20, B=8")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_DIR))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SYMBOLIC_SNIPPET, str(args.repeats)], cwd=root,
                          env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    imports, cold, warm = (float(v) for v in done.stdout.split()[-3:])
    print(f"  new process, wall clock (interpreter, imports, build, compile, one call): {fmt(wall)}")
    print(f"  of which imports and cell construction: {fmt(imports)}")
    print(f"  first call (graph, compile, run): {fmt(cold)}")
    print(f"  warm call (median of {args.repeats}): {fmt(warm)}")
    out["d"] = {"process_wall_s": wall, "imports_s": imports, "cold_call_s": cold, "warm_call_s": warm}


def section_e(args, out):
    print("\n(e) exact check (batched numeric) against T, H and parameter count (D=16, B=8)")
    print(f"  {'T':>4} {'H':>4} {'params':>7} {'time':>10} {'per param':>10}")
    res = []
    sizes = ((10, 32), (20, 32), (40, 32), (20, 16), (20, 64)) + (((20, 128),) if args.big else ())
    for steps, hidden in sizes:
        cell, params, batch = project_case(steps, 8, 16, hidden)
        n = sum(v.size for v in params.values())
        t = median_time(lambda: exact_check(cell, params, batch), max(1, args.repeats // 2),
                        warmup=False)
        print(f"  {steps:>4} {hidden:>4} {n:>7} {fmt(t):>10} {fmt(t / n):>10}")
        res.append({"steps": steps, "hidden": hidden, "params": n, "seconds": t})
    out["e"] = res


SECTIONS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e,
            "f": section_f}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="a,b,c,d,e,f",
                   help="comma-separated subset of a,b,c,d,e,f")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--torch-exact-repeats", type=int, default=1,
                   help="timed runs of torch's exact gradcheck (minutes each)")
    p.add_argument("--skip-torch-exact", action="store_true",
                   help="skip torch's exact gradcheck (the slow part)")
    p.add_argument("--big", action="store_true",
                   help="(e) also at H=128 (56k parameters, about two minutes)")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds alone (by default they are raised, "
                        "as the gradcheck command does: gradcheck.process_memory)")
    return p.parse_args(argv)


def header():
    """What ran where: versions, threads, load."""
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__ if torch is not None else 'not installed (skipped)'}")
    threads = torch.get_num_threads() if torch is not None else "-"
    load = os.getloadavg()
    print(f"cpus {os.cpu_count()}, torch threads {threads}, load average {load}")
    print(gate_kernels.status())
    print(f"project imported from {PROJECT_DIR}")
    if load[0] > 0.5:
        print("warning: other processes are running; multi-threaded BLAS and torch's OpenMP "
              "threads slow down many times on a busy machine, so these numbers are not comparable")


def main(argv=None) -> int:
    args = parse_args(argv)
    kept = False if args.default_malloc else keep_freed_memory()
    header()
    print(f"freed memory kept in the process (as the gradcheck command does): {kept}")
    out = {}
    for name in args.sections.split(","):
        SECTIONS[name.strip()](args, out)
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
