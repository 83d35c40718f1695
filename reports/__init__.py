"""HTML diff reports of gradient checks: one self-contained file per check."""

from reports.html import render_report, worst_elements, write_report

__all__ = ["render_report", "write_report", "worst_elements"]
