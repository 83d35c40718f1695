"""The ``gradcheck`` command line.

Exit codes: 0 every comparison passes; 1 a gradient mismatch; 2 a usage or
input error (one line on stderr naming the problem); 3 an internal error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shlex
import sys
import traceback

__all__ = ["make_parser", "main", "EXIT_PASS", "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_INTERNAL",
           "EXIT_INTERRUPTED"]

EXIT_PASS, EXIT_MISMATCH, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = """\
exit codes:
  0  every oracle pair agrees on every parameter
  1  a gradient mismatch (or the forward passes disagree)
  2  a usage or input error, named in one line on stderr
  3  an internal error (rerun with --traceback to see it)
130  interrupted (Ctrl-C): the partial result is printed and its report written
"""

CHECK_EXAMPLES = """\
examples:
  gradcheck check gru
      the reference GRU, all three oracles, default sizes
  gradcheck check gru --reset after --gate hard --readout mean --layers 2
      the cuDNN/torch reset convention, hard-sigmoid gates, mean pooling, 2 layers
  gradcheck check gru --embedding --vocab 50 --steps 12 --seed 7 --json
      token-id inputs through an embedding; one JSON object on stdout
  gradcheck check gru --embedding --vocab 20000 --embedding-sample 32
      a large embedding: its used rows in full, 32 unused rows sampled numerically
  gradcheck check gru --oracles analytic,numeric --atol 1e-8
      no symbolic backend needed; a tighter absolute tolerance
  gradcheck check gru --steps 9 --truncate 3 --truncation window --mask lengths
      truncated BPTT(3) on right-padded sequences, checked exactly against its surrogate
  gradcheck check gru --layers 2 --html report.html
      also write a self-contained HTML report
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _integer(text, alternative=""):
    """``int(text)``, or the argparse error that it is not an integer (or ``alternative``)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer{alternative}") from None


def _positive_int(text):
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _class_count(text):
    value = _integer(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text} must be at least 2 (a softmax over one class "
                                         "is constant)")
    return value


def _tolerance(what):
    """The parser of --atol or --rtol: a number the tolerance model accepts for ``what``."""
    def parse(text):
        from gradcheck.tolerance import resolve_tolerance
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            resolve_tolerance(**{what: value})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    parse.__name__ = what       # argparse names the type in its messages
    return parse


# the seed of every random draw when --seed is not given
DEFAULT_SEED = 0


def _seed_of(args) -> int:
    """The seed a check draws with: ``--seed``, else ``DEFAULT_SEED``."""
    return DEFAULT_SEED if args.seed is None else args.seed


def _seed(text):
    value = _integer(text)
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 2**63 - 1")
    return value


def _truncate(text):
    value = _integer(text)
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"{text} must be -1 (full BPTT) or at least 1")
    return value


def _embedding_sample(text):
    if text == "all":
        return text
    value = _integer(text, " or 'all'")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more, or 'all'")
    return value


def _version() -> str:
    """The version, and whether the compiled gate kernels run (cells.gate_kernels)."""
    from cells.gate_kernels import status
    from gradcheck import __version__
    return f"{__version__}; {status()}"


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradcheck",
        description="Verify hand-written BPTT gradients of recurrent cells against "
                    "finite differences and autodiff.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an internal error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    check = sub.add_parser(
        "check", help="check a cell's gradients with two or three oracles",
        description="Check a cell: seeded random parameters and data, its hand-written "
                    "gradient (analytic), central finite differences (numeric) and the symbolic "
                    "version's gradient (autodiff), compared pairwise. The cell is a built-in "
                    "one or path/to/file.py:NAME, where NAME is a make_case(seed) function, "
                    "a gradcheck.Case, a model class with forward_propagation and bptt, or a "
                    "Theano-tutorial layer (name_layer beside param_init_name; numeric "
                    "against autodiff).",
        epilog=CHECK_EXAMPLES + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("cell", help="a built-in cell (see 'gradcheck list') or path/to/file.py:NAME, "
                                    "a cell of your own (see the README)")
    sizes = check.add_argument_group("sizes")
    sizes.add_argument("--steps", type=_positive_int, default=None, metavar="T",
                       help="sequence length (default 5)")
    sizes.add_argument("--batch", type=_positive_int, default=None, metavar="B",
                       help="batch size (default 3)")
    sizes.add_argument("--input", type=_positive_int, default=None, metavar="D", help="input or embedding width (default 4)")
    sizes.add_argument("--hidden", type=_positive_int, default=None, metavar="H", help="hidden units per layer (default 5)")
    sizes.add_argument("--layers", type=_positive_int, default=None, metavar="L", help="stacked layers (default 1)")
    sizes.add_argument("--vocab", type=_positive_int, default=None, metavar="V", help="vocabulary size with --embedding (default 7)")
    sizes.add_argument("--classes", type=_class_count, default=None, metavar="C", help="readout classes (default 3)")
    sizes.add_argument("--seed", type=_seed, default=None, metavar="S", help=f"seed of every random draw (default {DEFAULT_SEED})")
    variant = check.add_argument_group("variant")
    variant.add_argument("--reset", choices=("before", "after"), default=None,
                         help="reset gate before the recurrent matmul (Cho et al.) or after it (cuDNN, torch); default before")
    variant.add_argument("--update", choices=("old", "new"), default=None,
                         help="old: h' = (1-z) n + z h (torch, cuDNN, the seed blog); "
                              "new: h' = z n + (1-z) h (the seed question); default old")
    variant.add_argument("--gate", choices=("sigmoid", "hard"), default=None,
                         help="gate activation: logistic sigmoid or clip(0.2a + 0.5, 0, 1); default sigmoid")
    variant.add_argument("--readout", choices=("lm", "mean"), default=None,
                         help="per-step softmax (language model) or masked mean pooling + softmax; default lm")
    variant.add_argument("--embedding", action="store_true", default=None,
                         help="token-id inputs through an embedding")
    variant.add_argument("--truncate", type=_truncate, default=None, metavar="K",
                         help="truncated BPTT over K steps; -1 is full BPTT (default)")
    variant.add_argument("--truncation", choices=("window", "tail"), default=None,
                         help="window: the loss at step t reaches steps t-K..t (BPTT(K)); "
                              "tail: only the last K steps are back-propagated "
                              "(scan's truncate_gradient); default window")
    variant.add_argument("--mask", choices=("none", "lengths", "random"), default=None,
                         help="no mask, right-padded random lengths, or a random 0/1 pattern; default none")
    how = check.add_argument_group("checking")
    how.add_argument("--oracles", default=None, metavar="LIST",
                     help="comma-separated subset of analytic,numeric,autodiff (at least two; "
                          "default all three, or all the cell has)")
    how.add_argument("--atol", type=_tolerance("atol"), default=None, metavar="X",
                     help="absolute tolerance, 0 or more (default per dtype: 1e-6 for float64)")
    how.add_argument("--rtol", type=_tolerance("rtol"), default=None, metavar="X",
                     help="relative tolerance, 0 <= X < 1 (default per dtype: 1e-5 for float64)")
    how.add_argument("--bug", metavar="NAME", default=None,
                     help="check a deliberately broken variant of the cell instead "
                          "(test material; 'gradcheck list' names them)")
    how.add_argument("--backend", choices=("pytensor", "theano"), default=None,
                     help="library of the symbolic (autodiff) cell; default pytensor")
    how.add_argument("--mode", choices=("exact", "fast"), default=None,
                     help="exact: every element by finite differences; fast: random directions per "
                          "gate block first, then the exact check only where they fail (default exact)")
    how.add_argument("--numeric", choices=("batched", "central", "complex"), default=None,
                     help="numeric oracle: central differences batched through one forward pass, "
                          "one probe at a time, or complex step (sigmoid gates only); default batched")
    how.add_argument("--directions", type=_positive_int, default=None, metavar="K",
                     help="random directions per gate block in fast mode (default 2)")
    how.add_argument("--max-elements", type=_positive_int, default=None, metavar="N",
                     help="differentiate at most N elements of each parameter numerically "
                          "(a seeded sample; default: all, or 4096 above 50,000 parameters)")
    how.add_argument("--embedding-sample", type=_embedding_sample, default=None, metavar="N|all",
                     help="embedding rows the batch does not use to differentiate numerically "
                          "(a seeded sample); the rows it uses are differentiated in full and "
                          "every unused row's analytic gradient must be exactly 0; 'all' "
                          "differentiates every row (default 8)")
    how.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    how.add_argument("--html", metavar="PATH", default=None,
                     help="also write a self-contained HTML report to PATH")

    report = sub.add_parser(
        "report", help="render a saved --json result as an HTML report",
        description="Render the JSON object printed by 'gradcheck check --json' as one "
                    "self-contained HTML file (no network, no files beside it).",
        epilog="examples:\n  gradcheck check gru --json > result.json\n"
               "  gradcheck report result.json -o report.html\n\n"
               "exit codes: 0 the report was written; 2 the input could not be read\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("result", metavar="RESULT.json", help="a saved 'gradcheck check --json' result")
    report.add_argument("-o", "--output", metavar="PATH", required=True, help="the HTML file to write")

    compare = sub.add_parser(
        "compare", help="compare a layer's forward states with the reference GRU's",
        description="Run a layer of yours and the reference GRU on the same parameters and "
                    "inputs, and report the first time step and element where their states "
                    "differ, shape mismatches such as (B, H) against (T, B, H) included. This "
                    "finds forward bugs that leave gradients self-consistent, which no gradient "
                    "check can see. TARGET is a layer written for the Theano LSTM tutorial "
                    "(file.py:name_layer beside param_init_name). Conventions not given are "
                    "tried in turn; the one that matches longest is reported.",
        epilog="examples:\n"
               "  gradcheck compare cells/zoo/theano_question_gru.py:gru_layer\n"
               "      the seed question's GRU: returns rval[0], the first step's state only\n"
               "  gradcheck compare my_layers.py:gru_layer --update new --steps 8 --json\n\n"
               "exit codes: 0 the states agree at every step; 1 they differ; 2 usage or input error\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("target", metavar="TARGET", help="path/to/file.py:layer_function")
    compare.add_argument("--reference", choices=("gru",), default="gru", help="the reference cell (gru)")
    compare.add_argument("--hidden", type=_positive_int, default=4, metavar="H",
                         help="options['dim_proj']: input and hidden width (default 4)")
    compare.add_argument("--steps", type=_positive_int, default=6, metavar="T", help="sequence length (default 6)")
    compare.add_argument("--batch", type=_positive_int, default=3, metavar="B", help="batch size (default 3)")
    compare.add_argument("--seed", type=_seed, default=DEFAULT_SEED, metavar="S",
                         help=f"seed of every random draw (default {DEFAULT_SEED})")
    compare.add_argument("--mask", choices=("none", "lengths", "random"), default="none",
                         help="the mask given to both (default none)")
    compare.add_argument("--reset", choices=("before", "after"), default=None, help="fix the reference's reset convention")
    compare.add_argument("--update", choices=("old", "new"), default=None, help="fix the reference's update convention")
    compare.add_argument("--gate", choices=("sigmoid", "hard"), default=None, help="fix the reference's gate activation")
    compare.add_argument("--json", action="store_true", help="print one JSON object")

    sub.add_parser("list", help="list the built-in cells and their broken variants",
                   description="List the built-in cells that 'gradcheck check' accepts, and the "
                               "deliberately broken variants that --bug selects.")
    return parser


# option -> the config field it sets, for built-in cells
CONFIG_OPTIONS = {"input": "input_size", "hidden": "hidden_size", "layers": "layers",
                  "vocab": "vocab", "classes": "classes", "reset": "reset", "gate": "gate",
                  "readout": "readout", "embedding": "embedding", "truncate": "truncate",
                  "update": "update",
                  "truncation": "truncation"}
BUILTIN_ONLY = ("mask", "bug", "backend")


def _checking(args) -> dict:
    """The keyword arguments of ``check_gradients`` that the checking options set, with
    the defaults for those not given; ValueError for an option the run would ignore."""
    from gradcheck.check import parse_oracles
    from gradcheck.sparse_rows import EMBEDDING_SAMPLE

    if args.directions is not None and args.mode != "fast":
        raise ValueError("--directions applies to --mode fast only")
    sample = args.embedding_sample
    return dict(
        oracles=parse_oracles(args.oracles) if args.oracles is not None else None,
        atol=args.atol, rtol=args.rtol, max_elements=args.max_elements,
        mode=args.mode or "exact", numeric_method=args.numeric or "batched",
        directions=args.directions or 2,
        embedding_sample=EMBEDDING_SAMPLE if sample is None else None if sample == "all"
        else sample)


def _refuse_unread(args, oracles) -> None:
    """ValueError naming an option given for an oracle the check does not run: those only
    the numeric oracle reads (``gradcheck.runner.NUMERIC_ONLY``), or the autodiff one."""
    from gradcheck.runner import NUMERIC_ONLY

    for option in NUMERIC_ONLY:
        if getattr(args, option[2:].replace("-", "_")) is not None and "numeric" not in oracles:
            raise ValueError(f"{option} applies to the numeric oracle, which this check does not "
                             f"run (oracles {','.join(oracles)})")
    if getattr(args, "backend", None) is not None and "autodiff" not in oracles:
        raise ValueError(f"--backend names the autodiff oracle's library, which this check does "
                         f"not run (oracles {','.join(oracles)})")


def _sizes(args) -> dict:
    """``steps`` and ``batch``: as given, or the defaults T = 5, B = 3."""
    return {"steps": args.steps or 5, "batch": args.batch or 3}


def _given(args, names):
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _check_file_target(args, checking):
    from gradcheck.check import ORACLES, check_gradients
    from gradcheck.loader import case_from_target, load_target, sizes_taken
    from gradcheck.runner import checking_options
    from gradcheck.user_cells import Case, cell_name

    given = _given(args, list(CONFIG_OPTIONS) + list(BUILTIN_ONLY))
    if given:
        option = "--" + next(iter(given)).replace("_", "-")
        raise ValueError(f"{option} applies to built-in cells only; a file's cell sets its own "
                         "configuration")
    name = args.cell.rpartition(":")[2]
    target = load_target(args.cell)
    taken = sizes_taken(target)
    for size in ("steps", "batch"):
        if getattr(args, size) is not None and size not in taken:
            raise ValueError(f"{name} is not built with a {size} argument: --{size} would have "
                             "no effect on it")
    sizes = _sizes(args)
    seed = _seed_of(args)
    case = case_from_target(target, name=name, **sizes, seed=seed)
    # a Case defined in the file is drawn already: --seed reaches nothing of it (a
    # make_case, a model or a layer is built from the seed, whatever seed its Case records)
    takes_seed = not isinstance(target, Case)
    if args.seed is not None and not takes_seed and case.seed is not None \
            and case.seed != args.seed:
        raise ValueError(f"{name} is a Case with its own seed (Case.seed={case.seed}): "
                         f"--seed {args.seed} would not be used")
    asked = checking["oracles"]
    if asked and "autodiff" in asked and case.symbolic is None:
        raise ValueError(f"--oracles asks for autodiff, but {name} gives no symbolic twin of "
                         "its cell (Case(..., symbolic=...))")
    _refuse_unread(args, asked or case.oracles or (
        ORACLES if case.symbolic is not None else ("analytic", "numeric")))
    if args.embedding_sample is not None and not any(
            getattr(spec, "rows_indexed_by", None) for spec in case.cell.param_specs()):
        raise ValueError(f"--embedding-sample applies to a parameter read by row lookup (an "
                         f"embedding); {name}'s cell declares none (ParamSpec.rows_indexed_by)")
    result = check_gradients(case.cell, case.params, case.batch, symbolic=case.symbolic,
                             **{**checking, "oracles": asked or case.oracles},
                             seed=case.seed if case.seed is not None else seed,
                             cell_info={"name": cell_name(case.cell), "target": args.cell,
                                        **case.info})
    result.command = shlex.join(
        ["gradcheck", "check", args.cell]
        + [arg for size in taken for arg in (f"--{size}", str(sizes[size]))]
        # a Case without a seed of its own takes the check's seed too
        + (["--seed", str(seed)] if takes_seed or case.seed is None else [])
        # the oracles asked for, all three included: else the line would take the Case's
        + (["--oracles", ",".join(ORACLES)] if asked and tuple(asked) == ORACLES else [])
        + checking_options(**{**checking, "oracles": asked or ORACLES}, embedding=True))
    return result


def _checked(args, checking):
    """The CheckResult of ``gradcheck check``'s target: a built-in cell or a file's."""
    from gradcheck.check import ORACLES
    from gradcheck.loader import is_file_target, user_output_to_stderr
    from gradcheck.runner import check_builtin

    if is_file_target(args.cell):
        with user_output_to_stderr(args.json):          # stdout: the JSON object only
            return _check_file_target(args, checking)
    from cells import CELLS, get_cell
    if args.cell not in CELLS and (args.cell.endswith(".py") or os.path.exists(args.cell)):
        raise ValueError(f"{args.cell} is a path, not a built-in cell: name what to check in "
                         "a file, path/to/file.py:NAME (see the README, 'Check your own cell')")
    fields = set(get_cell(args.cell).config_class.__dataclass_fields__)
    config = {}
    for option, value in _given(args, CONFIG_OPTIONS).items():
        if CONFIG_OPTIONS[option] not in fields:
            raise ValueError(f"--{option} does not apply to cell {args.cell!r}")
        config[CONFIG_OPTIONS[option]] = value
    if args.embedding_sample is not None and not config.get("embedding"):
        raise ValueError("--embedding-sample applies to cells with --embedding only")
    if args.vocab is not None and not config.get("embedding"):
        raise ValueError("--vocab applies to cells with --embedding only")
    if args.truncation is not None and config.get("truncate", -1) == -1:
        raise ValueError("--truncation applies with --truncate K only (full BPTT has no window)")
    _refuse_unread(args, checking["oracles"] or ORACLES)
    return check_builtin(
        args.cell, **_sizes(args), seed=_seed_of(args),
        mask=args.mask or "none", bug=args.bug, backend=args.backend or "pytensor",
        **{**checking, "oracles": checking["oracles"] or ORACLES}, **config)


def _emit(text: str, stream=None) -> None:
    """Print ``text`` to ``stream`` (stdout); a reader that has gone (``| head``) ends the
    output, not the command: the rest is dropped and the exit code is still the verdict's."""
    stream = sys.stdout if stream is None else stream
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        # point the stream at /dev/null, so that the exit's own flush does not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _run_check(args) -> int:
    from gradcheck import progress
    from gradcheck.text_report import format_result

    checking = _checking(args)
    if args.html is not None:
        from reports import check_output_path
        check_output_path(args.html)                    # before the check runs
    # a bar on stderr when it is a terminal and the numeric oracle runs over a second
    with progress.showing(progress.TqdmBar() if sys.stderr.isatty() else None):
        result = _checked(args, checking)
    # the JSON document, for --json and --html only (the text is read off the result)
    doc = result.as_dict() if args.json or args.html is not None else None
    if args.json:
        _emit(json.dumps(doc, indent=2, allow_nan=False))     # as_dict wrote NaN as "nan"
    else:
        _emit(format_result(result))
    if args.html is not None:
        from reports import write_report
        path = write_report(doc, args.html)
        _emit(f"report: {path}", sys.stderr if args.json else sys.stdout)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PASS if result.passed else EXIT_MISMATCH


def _run_compare(args) -> int:
    import numpy as np

    from gradcheck.conformance import compare_to_reference
    from gradcheck.loader import UserCodeError, calling_user_code, user_code
    from gradcheck.masks import make_mask
    from gradcheck.theano_layer import TheanoLayer, find_layer, load_layer_file

    path, sep, name = args.target.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise UserCodeError(f"{args.target!r} is not of the form path/to/file.py:layer_function")
    module = load_layer_file(path, seed=args.seed)
    layer, init, stem = find_layer(module, name)
    prefix = stem
    model = TheanoLayer(layer, init, prefix, args.hidden, 2)
    with calling_user_code(f"{init.__name__}(...)"):       # an exception or exit: one line
        params = model.init_params()
    layer_params = {k: v for k, v in params.items() if k not in ("U", "b")}
    mask = make_mask(args.mask, np.random.default_rng(args.seed + 1), args.steps, args.batch)
    fixed = {k: getattr(args, k) for k in ("reset", "update", "gate") if getattr(args, k)}
    try:
        with user_code(f"running {name}"):
            result, config = compare_to_reference(
                lambda x, m: model.states(params, x, m), layer_params, hidden=args.hidden,
                steps=args.steps, batch=args.batch, seed=args.seed, mask=mask, prefix=prefix,
                conventions=fixed)
    except ValueError:                                  # UserCodeError included
        raise
    except Exception as exc:
        # PyTensor types a width-1 state as broadcastable (shape (?, 1)), which a scan
        # step's output of unknown width does not match: say what to do about it
        hint = ("; PyTensor takes a state of width 1 as broadcastable, which the scan's "
                "step output does not match: use --hidden 2 or more"
                if args.hidden == 1 and "scan" in str(exc) else "")
        text = str(exc).rstrip(".") if hint else str(exc)
        raise UserCodeError(f"running {name} raised {type(exc).__name__}: {text}{hint}") from None
    from gradcheck.check import json_ready

    convention = f"reset={config.reset}, update={config.update}, gate={config.gate}"
    doc = {"verdict": result.verdict, "seed": args.seed, "target": args.target,
           "reference": {"cell": args.reference, "reset": config.reset, "update": config.update,
                         "gate": config.gate},
           **{k: v for k, v in result.as_dict().items() if k != "verdict"}}
    if args.json:
        _emit(json.dumps(json_ready(doc), indent=2, allow_nan=False))
    else:
        _emit(f"compare {args.target} with the reference {args.reference} ({convention}); "
              f"T={args.steps} B={args.batch} H={args.hidden} mask={args.mask}; seed={args.seed}")
        _emit(f"{result.verdict}: {result.message}")
    return EXIT_PASS if result.passed else EXIT_MISMATCH


def _run_report(args) -> int:
    from reports import check_output_path, validate_result, write_report

    check_output_path(args.output)

    try:
        with open(args.result, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read {args.result}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.result} is not JSON: {exc.msg} at line {exc.lineno}") from None
    validate_result(doc, source=args.result)
    path = write_report(doc, args.output)
    _emit(f"report: {path}")
    return EXIT_PASS


def _first_sentence(text) -> str:
    """The first sentence of a docstring, on one line (a period ends a sentence after a
    letter, a digit or a closing bracket and before a space, so ``t - k .. t`` and
    ``3.5`` do not)."""
    flat = " ".join(text.split())
    return re.split(r"(?<=[A-Za-z0-9)\]])\.(?:\s|$)", flat)[0].rstrip(".") + "."


def _run_list(args) -> int:
    from cells import CELLS

    width = max(len(name) for name in CELLS)
    for name, entry in CELLS.items():
        _emit(f"{name.ljust(width)}  {entry.description}")
        for bug, cls in entry.broken().items():
            doc = _first_sentence(cls.__doc__ or "")
            _emit(f"{''.ljust(width)}    --bug {bug}: {doc}")
    return EXIT_PASS


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    from gradcheck.process_memory import keep_freed_memory
    keep_freed_memory()         # large arrays reuse freed pages (glibc; same numbers)
    try:
        if args.command == "check":
            return _run_check(args)
        if args.command == "report":
            return _run_report(args)
        if args.command == "compare":
            return _run_compare(args)
        return _run_list(args)
    except (ValueError, ImportError) as exc:
        sys.stderr.write(f"gradcheck {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except MemoryError as exc:
        sys.stderr.write(f"gradcheck {args.command}: error: out of memory ({exc}): choose "
                         "smaller sizes or --max-elements\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("gradcheck: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # an internal error: one line unless asked for more
        if args.traceback:
            traceback.print_exc()
            return EXIT_INTERNAL
        sys.stderr.write(f"gradcheck {args.command}: internal error: {type(exc).__name__}: {exc} "
                         "(rerun with --traceback)\n")
        return EXIT_INTERNAL


def console_main() -> int:
    """The ``gradcheck`` command (and ``python -m gradcheck``, ``python cli.py``): ``main()``
    in a process of its own, which ends when it returns.

    Its objects end with the process, so they are frozen first (``gc.freeze``: the
    collector's exit-time pass skips them): exit took 31 ms of a 0.6 s check here,
    13.5 ms frozen.  In-process callers of ``main()`` are left alone.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
