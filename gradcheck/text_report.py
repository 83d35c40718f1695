"""The terminal table of a check result."""

from __future__ import annotations

import math

__all__ = ["format_result"]

_CONFIG_KEYS = (("steps", "T"), ("batch", "B"), ("input_size", "D"), ("hidden_size", "H"),
                ("layers", "L"), ("classes", "K"), ("vocab", "V"))


def _cell_line(cell: dict) -> str:
    sizes = " ".join(f"{short}={cell[key]}" for key, short in _CONFIG_KEYS if key in cell)
    variants = [f"{k}={cell[k]}" for k in ("reset", "gate", "readout", "embedding", "mask")
                if k in cell]
    if cell.get("truncate", -1) != -1:
        variants.append(f"truncation={cell['truncation']} k={cell['truncate']}")
    elif "truncate" in cell:
        variants.append("full BPTT")
    parts = [p for p in (sizes, ", ".join(variants)) if p]
    return f"cell {cell.get('name', '?')}" + (f": {'; '.join(parts)}" if parts else "")


def format_result(result) -> str:
    """A readable table: one row per parameter and oracle pair, then the verdict."""
    header = ("parameter", "shape", "oracles", "max abs err", "max rel err",
              "failed", "worst element", "verdict")
    rows = []
    for c in result.comparisons:
        shape = "x".join(str(n) for n in c.shape) or "scalar"
        total = c.compared or math.prod(c.shape)        # a sampled check: of those compared
        worst = f"[{', '.join(str(i) for i in c.worst_index)}]"
        if c.worst_block:
            worst += f" {c.worst_block}"
        failed = f"{c.failed}/{total}" + (f" (+{c.kinks} kink)" if c.kinks else "")
        rows.append((c.parameter, shape, " ~ ".join(c.oracles), f"{c.max_abs_error:.2e}",
                     f"{c.max_rel_error:.2e}", failed, worst,
                     "pass" if c.passed else "FAIL"))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [_cell_line(result.cell) + f"; seed={result.seed}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    tol = result.comparisons[0].tolerance if result.comparisons else None
    if tol is not None:
        lines.append(f"tolerance: |a - b| <= {tol.atol:g} + {tol.rtol:g} * max(|a|, |b|)")
    times = ", ".join(f"{k} {v:.3f} s" for k, v in result.timings.items())
    lines.append(f"time: {times or 'no oracle finished'}")
    lines.append(result.summary())
    if result.localisation is not None:
        lines.append("where: " + result.localisation.sentence())
    lines.append(f"seed={result.seed}" + (f"; reproduce: {result.command}" if result.command else ""))
    return "\n".join(lines)
