"""Check that a JSON document has the structure the HTML report reads.

A saved result may be hand-edited, truncated or written by something else.
``validate_result`` finds the first field the renderer would trip over and
raises ``ValueError`` naming it by its JSON path (``comparisons[0].oracles is
missing``), so rendering a bad document never ends in a KeyError or TypeError.
Fields a real result may lack or leave null (localisation, step_curve,
gradients, blocks, notes, versions, ...) stay optional; when present they must
have the shape the renderer reads.
"""

from __future__ import annotations

import json
import math

__all__ = ["validate_result"]

VERDICTS = ("pass", "fail", "interrupted")
MISSING = object()


class _Invalid(ValueError):
    """One problem, already phrased with its JSON path."""


def validate_result(doc, source: str | None = None) -> dict:
    """Return ``doc`` if the report can render it, else raise ValueError.

    source: where the document came from (a file name), for the message.
    """
    try:
        _check_result(doc)
    except _Invalid as exc:
        head = f"{source} is not a gradcheck result" if source else "not a gradcheck result"
        raise ValueError(f"{head}: {exc}") from None
    return doc


# -- primitives --------------------------------------------------------------------------

def _kind(value) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _describe(value) -> str:
    """A scalar as JSON (``"maybe"``, ``5``, ``null``), cut at 40 characters; else its type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return _kind(value)


def _key(path: str, key) -> str:
    key = str(key)
    if not path:
        return key if key.isidentifier() else json.dumps(key)
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def _fail(path: str, problem: str):
    raise _Invalid(f"{path} {problem}" if path else f"the result {problem}")


def _is_str(value) -> bool:
    return isinstance(value, str)


def _is_list(value) -> bool:
    return isinstance(value, list)


def _is_dict(value) -> bool:
    return isinstance(value, dict)


def _is_number(value) -> bool:
    """A float, or an int a float can hold (JSON allows 1e400 written out in digits)."""
    return isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1e308)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expect(value, path: str, test, what: str):
    if not test(value):
        _fail(path, f"must be {what}, not {_describe(value)}")
    return value


def _field(obj: dict, key: str, path: str, test, what: str, required=True, null=False):
    """``obj[key]`` checked with ``test``; MISSING when absent and optional, or null and
    ``null`` allowed."""
    value = obj.get(key, MISSING)
    if value is MISSING and required:
        _fail(_key(path, key), "is missing")
    if value is MISSING or (value is None and null):
        return MISSING
    return _expect(value, _key(path, key), test, what)


def _optional(obj: dict, key: str, path: str, test, what: str):
    """``obj[key]`` checked with ``test``, or MISSING when absent or null."""
    return _field(obj, key, path, test, what, required=False, null=True)


def _required(obj: dict, key: str, path: str):
    if key not in obj:
        _fail(_key(path, key), "is missing")
    return obj[key]


def _list_of(value, path: str, test, what: str) -> list:
    for i, item in enumerate(value):
        _expect(item, f"{path}[{i}]", test, what)
    return value


# how a result writes the non-finite numbers of its arrays (JSON has none)
NON_FINITE = ("nan", "inf", "-inf")


def _is_array_number(value) -> bool:
    """A number of an array: a number, or one of the strings NON_FINITE."""
    return _is_number(value) or (isinstance(value, str) and value in NON_FINITE)


def _array_shape(value, path: str) -> tuple:
    """The shape of a nested list of numbers; a ragged or non-numeric one is a problem."""
    if _is_array_number(value):
        return ()
    _expect(value, path, _is_list, "a number or an array of numbers")
    if all(_is_array_number(v) for v in value):
        return (len(value),)
    shapes = [_array_shape(v, f"{path}[{i}]") for i, v in enumerate(value)]
    for i, shape in enumerate(shapes):
        if shape != shapes[0]:
            _fail(f"{path}[{i}]", f"has shape {list(shape)} where {path}[0] has {list(shapes[0])}")
    return (len(value),) + shapes[0]


def _fits(got: tuple, want: tuple) -> bool:
    """JSON keeps no shape of an empty array: ``[]`` stands for any (0, ...) shape."""
    if got == want:
        return True
    return math.prod(want) == 0 and got[-1:] == (0,) and got == want[:len(got)]


def _matrix(value, path: str, ndim: int, rows=None):
    """A numeric array of ``ndim`` dimensions, none of them empty.

    rows: ``(count, what)``: the first dimension must be ``count``, one per ``what``.
    """
    shape = _array_shape(value, path)
    if len(shape) != ndim or 0 in shape:
        _fail(path, f"must be a non-empty {ndim}-dimensional array of numbers, "
                    f"not of shape {list(shape)}")
    if rows is not None and shape[0] != rows[0]:
        _fail(path, f"has {shape[0]} rows, but {rows[1]} has {rows[0]}")
    return shape


# -- the parts of a result ----------------------------------------------------------------

# what every result has; a document without them is named by all it lacks at once
TOP_LEVEL = ("verdict", "cell", "oracles", "comparisons")


def _check_result(doc):
    _expect(doc, "", _is_dict, "a JSON object")
    missing = [key for key in TOP_LEVEL if key not in doc]
    if missing:
        raise _Invalid(f"missing {', '.join(missing)}")
    _field(doc, "verdict", "", lambda v: v in VERDICTS, "one of " + ", ".join(VERDICTS))
    _field(doc, "summary", "", _is_str, "a string")
    _field(doc, "cell", "", _is_dict, "an object")
    oracles = _field(doc, "oracles", "", _is_list, "an array")
    _list_of(oracles, "oracles", _is_str, "a string")
    comparisons = _field(doc, "comparisons", "", _is_list, "an array")
    for i, comp in enumerate(comparisons):
        _check_comparison(comp, f"comparisons[{i}]")
    _check_run(doc)
    _check_localisation(doc)
    _check_step_curve(doc)
    _check_blocks(doc)
    _check_gradients(doc)


def _check_run(doc):
    """The optional run tables: command, notes, versions, timings, losses."""
    _optional(doc, "command", "", _is_str, "a string")
    notes = _optional(doc, "notes", "", _is_list, "an array")
    if notes is not MISSING:
        _list_of(notes, "notes", _is_str, "a string")
    _optional(doc, "versions", "", _is_dict, "an object")
    for table in ("timings_s", "losses"):
        values = _optional(doc, table, "", _is_dict, "an object")
        for key, value in ({} if values is MISSING else values).items():
            _expect(value, _key(table, key), _is_number, "a number")


def _check_comparison(comp, path: str):
    _expect(comp, path, _is_dict, "an object")
    _field(comp, "parameter", path, _is_str, "a string")
    shape = _field(comp, "shape", path, _is_list, "an array")
    _list_of(shape, _key(path, "shape"), _is_count, "a count (an integer, 0 or more)")
    _field(comp, "oracles", path, lambda v: _is_list(v) and len(v) == 2,
           "an array of two oracle names")
    _list_of(comp["oracles"], _key(path, "oracles"), _is_str, "a string")
    _field(comp, "verdict", path, lambda v: v in ("pass", "fail"), "pass or fail")
    number_or_text = (lambda v: _is_number(v) or _is_str(v)), "a number (or 'nan', 'inf')"
    _field(comp, "max_abs_error", path, *number_or_text)
    _field(comp, "max_rel_error", path, *number_or_text)
    for key in ("atol", "rtol"):
        _field(comp, key, path, _is_number, "a number")
    for key in ("failed_elements", "kink_elements"):
        _optional(comp, key, path, _is_count, "a count (an integer, 0 or more)")
    index = _optional(comp, "worst_index", path, _is_list, "an array")
    if index is not MISSING:
        _list_of(index, _key(path, "worst_index"), _is_count, "an index (an integer, 0 or more)")
    _optional(comp, "worst_block", path, _is_str, "a string or null")


def _check_localisation(doc):
    loc = _optional(doc, "localisation", "", _is_dict, "an object")
    if loc is MISSING:
        return
    _field(loc, "sentence", "localisation", _is_str, "a string")
    rows = _field(loc, "rows", "localisation", _is_list, "an array")
    for i, row in enumerate(rows):
        path = f"localisation.rows[{i}]"
        _expect(row, path, _is_dict, "an object")
        _field(row, "parameter", path, _is_str, "a string")
        _field(row, "block", path, _is_str, "a string or null", null=True)
    if rows:
        _matrix(_required(loc, "step_excess", "localisation"), "localisation.step_excess", 2,
                rows=(len(rows), "localisation.rows"))
    excess = _field(loc, "adjoint_excess", "localisation", _is_list, "an array")
    if excess:
        layers, steps = _matrix(excess, "localisation.adjoint_excess", 2)
        shape = _matrix(_required(loc, "adjoint_values", "localisation"),
                        "localisation.adjoint_values", 3,
                        rows=(layers, "localisation.adjoint_excess"))
        if shape[1] != steps or shape[2] < 2:
            _fail("localisation.adjoint_values", f"has shape {list(shape)}, expected "
                                                 f"[{layers}, {steps}, 2]")


def _check_step_curve(doc):
    curve = _optional(doc, "step_curve", "", _is_dict, "an object")
    if curve is MISSING:
        return
    lengths = [_matrix(_required(curve, key, "step_curve"), _key("step_curve", key), 1)[0]
               for key in ("steps", "errors")]
    if lengths[0] != lengths[1]:
        _fail("step_curve.errors", f"has {lengths[1]} values for {lengths[0]} steps")
    _field(curve, "step_used", "step_curve", _is_number, "a number")
    _field(curve, "parameter", "step_curve", _is_str, "a string")
    index = _field(curve, "index", "step_curve", _is_list, "an array")
    _list_of(index, "step_curve.index", _is_count, "an index (an integer, 0 or more)")


def _parameter_shapes(doc) -> dict:
    """Each compared parameter's shape; two comparisons of one parameter must agree on it."""
    shapes, first = {}, {}
    for i, comp in enumerate(doc["comparisons"]):
        name, shape = comp["parameter"], tuple(comp["shape"])
        if shapes.setdefault(name, shape) != shape:
            _fail(f"comparisons[{i}].shape", f"is {list(shape)}, but comparisons[{first[name]}]"
                                             f".shape of the same parameter is {list(shapes[name])}")
        first.setdefault(name, i)
    return shapes


def _check_blocks(doc):
    blocks = _optional(doc, "blocks", "", _is_dict, "an object")
    if blocks is MISSING:
        return
    shapes = _parameter_shapes(doc)
    for name, entry in blocks.items():
        path = _key("blocks", name)
        if entry is None or entry == {}:
            continue
        _expect(entry, path, _is_dict, "an object or null")
        names = _field(entry, "names", path, lambda v: _is_list(v) and v, "a non-empty array")
        _list_of(names, _key(path, "names"), _is_str, "a string")
        axis = _field(entry, "axis", path, lambda v: isinstance(v, int) and not isinstance(v, bool),
                      "an integer")
        if name in shapes:
            _check_block_fit(path, shapes[name], len(names), axis)


def _check_block_fit(path: str, shape: tuple, count: int, axis: int):
    if not -len(shape) <= axis < len(shape):
        _fail(_key(path, "axis"), f"{axis} is out of range for the parameter's shape {list(shape)}")
    if shape[axis] % count:
        _fail(path, f"splits axis {axis} of length {shape[axis]} into {count} blocks: "
                    "the length must be a multiple of the count")


def _check_gradients(doc):
    """Every gradient the report reads: an array of its comparison's shape."""
    grads = _optional(doc, "gradients", "", _is_dict, "an object")
    if grads is MISSING:
        return
    for oracle, arrays in grads.items():
        _expect(arrays, _key("gradients", oracle), _is_dict, "an object")
    shapes = _parameter_shapes(doc)
    for i, comp in enumerate(doc["comparisons"]):
        for oracle in comp["oracles"]:
            if oracle in grads and comp["parameter"] not in grads[oracle]:
                _fail(_key(_key("gradients", oracle), comp["parameter"]),
                      f"is missing (comparisons[{i}] compares it)")
    for oracle, arrays in grads.items():
        for name in (n for n in shapes if n in arrays):
            path = _key(_key("gradients", oracle), name)
            got = _array_shape(arrays[name], path)
            if not _fits(got, shapes[name]):
                _fail(path, f"has shape {list(got)}, but the comparisons of {name} give "
                            f"{list(shapes[name])}")
