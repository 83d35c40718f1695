"""HTML diff reports of gradient checks: one self-contained file per check."""

from reports.html import check_output_path, render_report, worst_elements, write_report
from reports.validate import validate_result

__all__ = ["render_report", "write_report", "worst_elements", "check_output_path",
           "validate_result"]
