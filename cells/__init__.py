"""Reference recurrent cells: hand BPTT in NumPy, and the same cells symbolically.

The registry maps a cell's name to its configuration class and to factories
for its NumPy and symbolic versions.  Symbolic cells import the Theano-API
backend, so they are imported only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from cells.gru import GRU, GRUConfig
from cells.lstm import LSTM, LSTMConfig

__all__ = ["CellEntry", "CELLS", "get_cell", "GRU", "GRUConfig", "LSTM", "LSTMConfig"]


@dataclass(frozen=True)
class CellEntry:
    """A built-in cell: its name, a one-line description and how to build it."""

    name: str
    description: str
    config_class: type
    numpy_class: type
    symbolic_path: str          # "module:Class", imported lazily
    broken_path: str = ""       # "module:DICT" of deliberately broken variants, by name

    def broken(self) -> dict[str, type]:
        """The deliberately broken variants (test material), by name."""
        if not self.broken_path:
            return {}
        module, _, name = self.broken_path.partition(":")
        return dict(getattr(import_module(module), name))

    def make(self, config, bug: str | None = None):
        """The NumPy cell, or with ``bug`` one of its deliberately broken variants."""
        if bug is None:
            return self.numpy_class(config)
        broken = self.broken()
        if bug not in broken:
            choices = ", ".join(broken) or "none"
            raise ValueError(f"unknown bug {bug!r} for cell {self.name!r}: choose from {choices}")
        return broken[bug](config)

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
        broken_path="cells.zoo.gru_bugs:BROKEN_GRUS",
    ),
    "lstm": CellEntry(
        name="lstm",
        description="long short-term memory (Theano tutorial, gates i|f|o|c): sigmoid/hard "
                    "gates, stacked layers, embedding inputs, lm/mean readouts",
        config_class=LSTMConfig,
        numpy_class=LSTM,
        symbolic_path="cells.lstm_symbolic:SymbolicLSTM",
        broken_path="cells.zoo.lstm_bugs:BROKEN_LSTMS",
    ),
}


def get_cell(name: str) -> CellEntry:
    """The built-in cell called ``name``; ValueError naming the choices otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}: choose from {', '.join(CELLS)}") from None
