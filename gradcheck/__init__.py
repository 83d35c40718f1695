"""gradcheck: verify hand-written BPTT gradients of recurrent cells.

Three oracles (analytic, numeric, autodiff) are compared pairwise; a mismatch
names the odd oracle out and the parameter, gate block and element.
"""

from gradcheck.batch import Batch
from gradcheck.check import ORACLES, CellError, CheckCannotFail, CheckResult, check_gradients
from gradcheck.compare import Comparison
from gradcheck.finite_differences import central_differences
from gradcheck.params import ParamSpec
from gradcheck.runner import check_builtin
from gradcheck.tolerance import Tolerance, resolve_tolerance
from gradcheck.user_cells import Case, UserCodeError, function_cell, model_cell

__all__ = ["Batch", "Case", "ORACLES", "CellError", "CheckCannotFail", "CheckResult",
           "check_gradients", "Comparison",
           "central_differences", "ParamSpec", "check_builtin", "function_cell", "model_cell",
           "Tolerance", "resolve_tolerance", "UserCodeError"]
__version__ = "0.1.0"
