"""Render a check result (its JSON form) as one self-contained HTML file.

The page is built with a Jinja2 template with autoescaping on, so every string
that came from a user (parameter and cell names, paths, commands) stays text.
Pictures are PNGs embedded as data URIs: the file opens offline with nothing
beside it.  ``write_report`` writes atomically: a temporary file in the same
folder, renamed over the target only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["render_report", "write_report", "worst_elements"]

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
        a = np.asarray(grads[a_name][comp["parameter"]], dtype=np.float64)
        b = np.asarray(grads[b_name][comp["parameter"]], dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(a - b)
            excess = err / (comp["atol"] + comp["rtol"] * np.maximum(np.abs(a), np.abs(b)))
        excess = np.where(np.isfinite(excess), excess, np.inf).reshape(-1)
        for flat in np.argsort(-excess, kind="stable")[:limit]:
            index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
            rows.append({
                "parameter": comp["parameter"], "index": list(index), "pair": f"{a_name} ~ {b_name}",
                "block": _block_of(result.get("blocks", {}).get(comp["parameter"]), a.shape, index),
                "a": float(a.reshape(-1)[flat]), "b": float(b.reshape(-1)[flat]),
                "error": float(err.reshape(-1)[flat]), "excess": float(excess[flat]),
            })
    rows.sort(key=lambda r: -r["excess"])
    return rows[:limit]


def _parameter_figures(result: dict) -> list[dict]:
    from reports.figures import parameter_heatmaps

    grads = result.get("gradients") or {}
    oracles = [o for o in result["oracles"] if o in grads]
    if not oracles:
        return []
    figures = []
    for name in dict.fromkeys(c["parameter"] for c in result["comparisons"]):
        comps = [c for c in result["comparisons"] if c["parameter"] == name]
        worst = max(comps, key=lambda c: (c["verdict"] == "fail", _num(c["max_abs_error"])))
        a, b = worst["oracles"]
        present = [o for o in oracles if name in grads[o]]      # an interrupted run has fewer
        panels = [(o, grads[o][name], "value") for o in present]
        diff = np.asarray(grads[a][name], dtype=np.float64) - np.asarray(grads[b][name],
                                                                          dtype=np.float64)
        panels.append((f"|{a} - {b}|", diff, "log_error"))
        blocks = result.get("blocks", {}).get(name)
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
    """The whole HTML page for ``result`` (the dict of ``CheckResult.as_dict()``)."""
    from reports.figures import adjoint_plot, step_gate_map, step_size_plot

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
    """Render and write atomically: the target is replaced only by a complete file."""
    path = Path(path)
    html = render_report(result)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
