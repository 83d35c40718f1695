"""Reference recurrent cells: hand BPTT in NumPy, and the same cells symbolically.

The registry maps a cell's name to its configuration class and to factories
for its NumPy and symbolic versions.  Symbolic cells import the Theano-API
backend, so they are imported only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from cells.gru import GRU, GRUConfig

__all__ = ["CellEntry", "CELLS", "get_cell", "GRU", "GRUConfig"]


@dataclass(frozen=True)
class CellEntry:
    """A built-in cell: its name, a one-line description and how to build it."""

    name: str
    description: str
    config_class: type
    numpy_class: type
    symbolic_path: str          # "module:Class", imported lazily

    def make(self, config):
        return self.numpy_class(config)

    def make_symbolic(self, config, backend: str = "pytensor"):
        module, _, cls = self.symbolic_path.partition(":")
        return getattr(import_module(module), cls)(config, backend=backend)


CELLS = {
    "gru": CellEntry(
        name="gru",
        description="gated recurrent unit: reset before/after, sigmoid/hard gates, "
                    "stacked layers, embedding inputs, lm/mean readouts",
        config_class=GRUConfig,
        numpy_class=GRU,
        symbolic_path="cells.gru_symbolic:SymbolicGRU",
    ),
}


def get_cell(name: str) -> CellEntry:
    """The built-in cell called ``name``; ValueError naming the choices otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}: choose from {', '.join(CELLS)}") from None
