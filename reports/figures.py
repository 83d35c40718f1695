"""The report's pictures, drawn with matplotlib and embedded as base64 PNG.

Each function takes plain arrays and returns a ``data:image/png;base64,...``
URI, so the HTML file needs nothing outside itself.  Figure sizes are fixed
in inches whatever the array size, so a 256 x 768 matrix is as readable as a
4 x 12 one (matplotlib resamples large images for display).
"""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["parameter_heatmaps", "step_gate_map", "adjoint_plot", "step_size_plot"]

DPI = 80


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_uri(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    # NaN cells (a NaN gradient) are drawn in the colour map's "bad" colour; the colour
    # normalisation's invalid-value warning about them says nothing to the reader
    with np.errstate(invalid="ignore", divide="ignore"):
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _as_matrix(a):
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(1, -1) if a.ndim <= 1 else a.reshape(a.shape[0], -1)


def _mark_blocks(ax, blocks, axis, shape):
    """Lines between gate blocks, and the blocks' names on a top (or right) axis."""
    if not blocks:
        return
    along_columns = len(shape) == 1 or axis % len(shape) == 1
    n = shape[-1] if along_columns else shape[0]
    width = n / len(blocks)
    centres = [(k + 0.5) * width - 0.5 for k in range(len(blocks))]
    for k in range(1, len(blocks)):
        (ax.axvline if along_columns else ax.axhline)(k * width - 0.5, color="black",
                                                      linewidth=1.4)
    if along_columns:
        top = ax.secondary_xaxis("top")
        top.set_xticks(centres)
        top.set_xticklabels(blocks, fontsize=10, fontweight="bold")
        top.tick_params(length=0)
    else:
        side = ax.secondary_yaxis("right")
        side.set_yticks(centres)
        side.set_yticklabels(blocks, fontsize=10, fontweight="bold")
        side.tick_params(length=0)


def parameter_heatmaps(name, shape, panels, blocks=None, block_axis=-1) -> str:
    """One row of heat maps for a parameter: each oracle's gradient, then the difference.

    panels: ``[(title, array, kind)]`` where kind is "value" (one shared diverging
        scale centred at 0) or "log_error" (log10 of an absolute difference).
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    mats = [(title, _as_matrix(a), kind) for title, a, kind in panels]
    rows, cols = mats[0][1].shape
    vector = len(shape) <= 1         # a vector or a scalar: one row
    values = [m for _, m, kind in mats if kind == "value"]
    vmax = max((float(np.nanmax(np.abs(m))) for m in values if m.size), default=1.0) or 1.0
    # fixed figure size whatever the matrix size: wide matrices get short panels
    height = 1.9 if vector else 1.6 + min(2.6, 2.6 * rows / cols if cols >= rows else 2.6)
    fig, axes = plt.subplots(1, len(mats), figsize=(3.4 * len(mats) + 1.2, height),
                             squeeze=False, layout="constrained")
    value_axes, value_image = [], None
    for i, (ax, (title, m, kind)) in enumerate(zip(axes[0], mats)):
        if kind == "value":
            im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                           interpolation="nearest")
            value_axes.append(ax)
            value_image = im
        else:
            with np.errstate(divide="ignore"):
                logm = np.log10(np.maximum(np.abs(m), 1e-18))
            im = ax.imshow(logm, cmap="magma", vmin=-16, vmax=max(0.0, float(np.nanmax(logm))),
                           aspect="auto", interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, shrink=0.9)
            cb.set_label("log10 |difference|", fontsize=8)
            cb.ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("element" if vector else "column", fontsize=8)
        if vector:
            ax.set_yticks([])
        elif i == 0:
            ax.set_ylabel("row", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.tick_params(labelsize=7)
        _mark_blocks(ax, blocks, block_axis, shape)
    if value_image is not None:
        cb = fig.colorbar(value_image, ax=value_axes, shrink=0.9)
        cb.set_label("gradient", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(f"{name}   ({' x '.join(str(n) for n in shape)})", fontsize=11)
    return _to_uri(fig)


def step_gate_map(rows, excess) -> str:
    """Time step (x) by parameter block (y): log10 of the error over its tolerance.

    Green is inside the tolerance (< 0), red outside (> 0).
    """
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    excess = np.asarray(excess, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logx = np.clip(np.log10(np.maximum(excess, 1e-6)), -6, 6)
    n_rows, steps = logx.shape
    fig, ax = plt.subplots(figsize=(min(14, 2.5 + 0.35 * steps), 1.2 + 0.28 * n_rows))
    im = ax.imshow(logx, cmap="RdYlGn_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-6, vmax=6),
                   aspect="auto", interpolation="nearest")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([f"{p} {b}" if b else p for p, b in rows], fontsize=8)
    ticks = range(steps) if steps <= 30 else np.linspace(0, steps - 1, 15).astype(int)
    ax.set_xticks(list(ticks))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("time step t")
    ax.set_title("per-step error by gate block (untied parameters)", fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cb.set_label("log10(error / tolerance)  (> 0 fails)", fontsize=8)
    return _to_uri(fig)


def adjoint_plot(values, excess) -> str:
    """State adjoints over time, one panel per layer: analytic and numeric directional
    derivatives, and their error over the tolerance."""
    plt = _pyplot()
    values = np.asarray(values, dtype=np.float64)
    excess = np.asarray(excess, dtype=np.float64)
    layers, steps = excess.shape
    fig, axes = plt.subplots(2, layers, figsize=(max(5.0, 4.6 * layers), 4.6), squeeze=False,
                             sharex=True)
    t = np.arange(steps)
    for l in range(layers):
        top, bottom = axes[0][l], axes[1][l]
        top.plot(t, values[l, :, 0], "o-", label="analytic (hand BPTT)")
        top.plot(t, values[l, :, 1], "x--", label="numeric (perturbed state)")
        top.set_title(f"layer {l}: directional dL/ds_t", fontsize=10)
        top.legend(fontsize=7)
        top.tick_params(labelsize=7)
        ok = excess[l] <= 1
        bottom.bar(t[ok], np.maximum(excess[l][ok], 1e-8), color="tab:green")
        bottom.bar(t[~ok], excess[l][~ok], color="tab:red")
        bottom.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        bottom.set_yscale("log")
        bottom.set_ylabel("error / tolerance", fontsize=8)
        bottom.set_xlabel("time step t", fontsize=8)
        bottom.tick_params(labelsize=7)
    return _to_uri(fig)


def step_size_plot(curve) -> str:
    """The V-shaped finite-difference error against step size, with the step used marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    steps = np.asarray(curve["steps"], dtype=np.float64)     # "nan" and "inf" read as such
    errors = np.maximum(np.asarray(curve["errors"], dtype=np.float64), 1e-18)
    ax.loglog(steps, errors, "o-", markersize=3)
    ax.axvline(curve["step_used"], color="tab:orange", linestyle="--",
               label="step used: eps^(1/3) max(1, |theta|)")
    where = f"{curve['parameter']}[{', '.join(str(i) for i in curve['index'])}]"
    ax.set_title(f"finite-difference error at {where} against {curve.get('reference_oracle')}",
                 fontsize=9)
    ax.set_xlabel("step h")
    ax.set_ylabel("|central difference - reference|")
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    return _to_uri(fig)
