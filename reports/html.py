"""Render a check result (its JSON form) as one self-contained HTML file.

The page is built with a Jinja2 template with autoescaping on, so every string
that came from a user (parameter and cell names, paths, commands) stays text.
Pictures are PNGs embedded as data URIs: the file opens offline with nothing
beside it.  ``write_report`` writes atomically: a temporary file in the same
folder, renamed over the target only when complete.  ``check_output_path``
refuses a path that cannot be written before any work is done; both raise
ValueError with a one-line message, as a bad result does (``validate_result``).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from reports.validate import validate_result

__all__ = ["render_report", "write_report", "worst_elements", "check_output_path"]

TEMPLATES = Path(__file__).with_name("templates")


def _environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(str(TEMPLATES)),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       trim_blocks=True, lstrip_blocks=True)


def _block_of(blocks, shape, index):
    if not blocks:
        return None
    axis = blocks["axis"] % len(shape)
    width = shape[axis] // len(blocks["names"])
    return blocks["names"][index[axis] // width]


def worst_elements(result: dict, limit: int = 12) -> list[dict]:
    """The elements furthest outside their tolerance, over every parameter and pair."""
    grads = result.get("gradients") or {}
    rows = []
    for comp in result["comparisons"]:
        a_name, b_name = comp["oracles"]
        if a_name not in grads or b_name not in grads:
            continue
        a, b = (_gradient(grads, name, comp) for name in (a_name, b_name))
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            err = np.abs(a - b)
            excess = err / (comp["atol"] + comp["rtol"] * np.maximum(np.abs(a), np.abs(b)))
        excess = np.where(np.isfinite(excess), excess, np.inf).reshape(-1)
        for flat in np.argsort(-excess, kind="stable")[:limit]:
            index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
            rows.append({
                "parameter": comp["parameter"], "index": list(index), "pair": f"{a_name} ~ {b_name}",
                "block": _block_of(_blocks(result, comp["parameter"]), a.shape, index),
                "a": float(a.reshape(-1)[flat]), "b": float(b.reshape(-1)[flat]),
                "error": float(err.reshape(-1)[flat]), "excess": float(excess[flat]),
            })
    rows.sort(key=lambda r: -r["excess"])
    return rows[:limit]


def _gradient(grads: dict, oracle: str, comp: dict) -> np.ndarray:
    """One oracle's gradient of the compared parameter, in the comparison's shape."""
    values = np.asarray(grads[oracle][comp["parameter"]], dtype=np.float64)
    return values.reshape(comp["shape"])        # JSON writes an empty (0, n) array as []


def _blocks(result: dict, name: str):
    return (result.get("blocks") or {}).get(name) or None


def _parameter_figures(result: dict) -> list[dict]:
    from reports.figures import parameter_heatmaps

    grads = result.get("gradients") or {}
    oracles = [o for o in result["oracles"] if o in grads]
    if not oracles:
        return []
    figures = []
    for name in dict.fromkeys(c["parameter"] for c in result["comparisons"]):
        comps = [c for c in result["comparisons"] if c["parameter"] == name]
        drawn = [c for c in comps if all(o in grads for o in c["oracles"])]
        if not drawn or not np.prod(comps[0]["shape"]):
            continue                # no gradients kept for any pair, or nothing to draw
        worst = max(drawn, key=lambda c: (c["verdict"] == "fail", _num(c["max_abs_error"])))
        a, b = worst["oracles"]
        present = [o for o in oracles if name in grads[o]]      # an interrupted run has fewer
        panels = [(o, _gradient(grads, o, worst), "value") for o in present]
        panels.append((f"|{a} - {b}|", _gradient(grads, a, worst) - _gradient(grads, b, worst),
                       "log_error"))
        blocks = _blocks(result, name)
        shape = tuple(worst["shape"])
        figures.append({
            "name": name, "verdict": "fail" if any(c["verdict"] == "fail" for c in comps) else "pass",
            "uri": parameter_heatmaps(name, shape, panels,
                                      blocks["names"] if blocks else None,
                                      blocks["axis"] if blocks else -1),
        })
    return figures


def _num(x):
    return float("inf") if isinstance(x, str) else float(x)


def render_report(result: dict) -> str:
    """The whole HTML page for ``result`` (the dict of ``CheckResult.as_dict()``).

    Raises ValueError naming the first malformed field (see ``validate_result``).
    """
    from reports.figures import adjoint_plot, step_gate_map, step_size_plot

    validate_result(result)
    loc = result.get("localisation")
    context = {
        "r": result,
        "parameter_figures": _parameter_figures(result),
        "worst": worst_elements(result),
        "step_map": step_gate_map([(row["parameter"], row["block"]) for row in loc["rows"]],
                                  loc["step_excess"]) if loc and loc["rows"] else None,
        "adjoints": adjoint_plot(loc["adjoint_values"], loc["adjoint_excess"])
        if loc and loc["adjoint_excess"] else None,
        "step_curve": step_size_plot(result["step_curve"]) if result.get("step_curve") else None,
    }
    return _environment().get_template("report.html.j2").render(**context)


def write_report(result: dict, path) -> Path:
    """Render and write atomically: the target is replaced only by a complete file.

    The path is checked first (``check_output_path``); missing parent folders are
    created.  Any failure to write raises ValueError naming ``path``, and leaves no
    temporary file behind.
    """
    target = check_output_path(path)
    html = render_report(result)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, html)
    except OSError as exc:
        raise ValueError(f"cannot write {_shown(target)}: {exc.strerror or exc}") from None
    return target


def _write_atomically(target: Path, text: str):
    """A temporary file beside ``target``, renamed over it when complete.

    Its name keeps at most 32 characters of the target's, so that it fits wherever
    the target's name fits (a 255-byte name is legal; ".NAME.XXXXXXXX.part" is not).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:32]}.", suffix=".part",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)       # as an ordinary new file
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the output path ------------------------------------------------------------------------

def check_output_path(path) -> Path:
    """``Path(path)`` if a report can be written there, else ValueError saying why.

    Refused: an empty path; one ending in a separator, ``.`` or ``..``; an existing
    directory or other non-regular file; a name too long for its folder; a parent
    that is a file; a folder where no file can be created (permissions, a
    read-only or pseudo file system such as /proc).  Missing parent folders are
    accepted: ``write_report`` creates them, as a CI job's report folder usually
    needs.  Nothing is created or left behind: the writability probe is an unnamed
    O_TMPFILE file, or, on file systems without it, a hidden file removed at once.
    """
    raw = os.fspath(path)
    raw = raw if isinstance(raw, str) else os.fsdecode(raw)
    if not raw:
        raise ValueError("the report path is empty")
    shown = _shown(raw)
    if os.path.basename(raw) in ("", ".", ".."):
        raise ValueError(f"cannot write {shown}: it names a directory, not a file")
    target = Path(raw)
    folder = _existing_folder(target.parent, shown)
    _check_name_length(target.name, folder, shown)
    _check_target(target, shown)
    _probe_folder(folder, shown)
    return target


def _shown(path) -> str:
    """The path for a one-line message: quoted only when it holds odd characters."""
    text = str(path)
    return text if text.isprintable() and text.strip() == text else repr(text)


def _stat(path: Path, shown: str, folder=True):
    """``os.stat(path)``, or None when nothing is there; ``folder``: name it if it fails."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:      # a loop of links, a folder that may not be searched, ...
        where = f" ({path})" if folder else ""
        raise ValueError(f"cannot write {shown}: {exc.strerror}{where}") from None


def _check_target(target: Path, shown: str):
    st = _stat(target, shown, folder=False)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ValueError(f"cannot write {shown}: it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot write {shown}: it exists and is not a regular file")


def _existing_folder(folder: Path, shown: str) -> Path:
    """The nearest existing ancestor of the target, which must be a directory."""
    for candidate in (folder, *folder.parents):
        st = _stat(candidate, shown)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"cannot write {shown}: {_shown(candidate)} is not a directory")
        return candidate
    raise ValueError(f"cannot write {shown}: none of its parent folders exists")


def _check_name_length(name: str, folder: Path, shown: str):
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(name)) > limit:
        raise ValueError(f"cannot write {shown}: the file name is longer than {limit} bytes")


def _probe_folder(folder: Path, shown: str):
    """Create (and drop) a file in ``folder``; refuse the path if that fails."""
    where = "the current folder" if folder == Path(".") else _shown(folder)
    try:
        if not _probe_unnamed(folder):
            fd, probe = tempfile.mkstemp(prefix=".gradcheck-probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"cannot write {shown}: cannot create files in {where} "
                         f"({exc.strerror})") from None


def _probe_unnamed(folder: Path) -> bool:
    """An O_TMPFILE file never appears in the folder; False if the system has none."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return False
    try:
        os.close(os.open(folder, flag | os.O_WRONLY, 0o600))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return False        # no O_TMPFILE here (or an old kernel): probe by name
        raise
    return True
