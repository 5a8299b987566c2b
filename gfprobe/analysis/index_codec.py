"""Run summaries as JSON values and back, for the study index (``index.py``).

Generic over :class:`~gfprobe.analysis.report.RunSummary`'s fields (``dataclasses.fields``), so
a field added to it is stored without a change here. Every value read back is checked against
its field's type annotation: the index is a file, and a file may be damaged or hostile. A value
that does not fit, a field missing, or one unknown, makes the entry unusable (:class:`Invalid`),
never a wrong number: the run is then read from its file.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any

import numpy as np

from gfprobe.analysis.report import RunSummary

# Not stored: the path is the caller's (the index names files within its folder), and per-layer
# summaries are read from the files (``--per-layer`` reports do not use the index).
LEFT_OUT = frozenset({"path", "per_layer"})

Decoder = Callable[[Any], Any]


class Invalid(Exception):
    """A stored value, or a field, that does not fit RunSummary as it is now."""


class Unsupported(Exception):
    """A RunSummary field whose type the index cannot store: such summaries are not indexed."""


def stored_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(RunSummary) if f.name not in LEFT_OUT]


def encode(summary: RunSummary) -> dict[str, Any]:
    """The summary's stored fields as JSON values (Unsupported if one cannot be)."""
    return {name: _plain(getattr(summary, name)) for name in stored_fields()}


def decode(stored: Any, path: str) -> RunSummary:
    """The summary of the run file ``path`` from what ``encode`` stored (Invalid if it does not fit)."""
    decoders = _decoders()
    if not isinstance(stored, dict) or stored.keys() != decoders.keys():
        raise Invalid("the stored fields differ from RunSummary's")
    return RunSummary(path=path, per_layer=[], **{name: decoder(stored[name]) for name, decoder in decoders.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype != np.float64 or value.ndim != 1:
            raise Unsupported(f"an array of {value.dtype} with {value.ndim} dimensions")
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise Unsupported(f"a value of type {type(value).__name__}")


@functools.cache
def _decoders() -> dict[str, Decoder]:
    hints = typing.get_type_hints(RunSummary)
    return {name: _decoder(hints[name]) for name in stored_fields()}


def _decoder(hint: Any) -> Decoder:
    """A function that checks a JSON value against ``hint`` and returns the field's value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _any
    if hint is np.ndarray or origin is np.ndarray:
        return _array
    if hint in (bool, int, float, str, type(None)):
        return functools.partial(_scalar, hint)
    if origin in (typing.Union, types.UnionType):
        return functools.partial(_union, [_decoder(arg) for arg in args])
    if origin is dict and args and args[0] is str:
        if args[1] in (bool, int, float, str):  # the common case, checked in one pass
            return functools.partial(_scalar_dict, args[1])
        return functools.partial(_dict, _decoder(args[1]))
    if origin is list and args:
        return functools.partial(_list, _decoder(args[0]))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])
        return lambda value: tuple(_list(item, value))
    raise Unsupported(f"a field of type {hint}")


def _scalar(kind: type, value: Any) -> Any:
    # bool is an int to Python, and JSON writes 1.0 as a float: the type must be exactly the field's.
    if type(value) is not kind:
        raise Invalid(f"{value!r} is not a {kind.__name__}")
    return value


def _union(decoders: list[Decoder], value: Any) -> Any:
    for decoder in decoders:
        try:
            return decoder(value)
        except Invalid:
            continue
    raise Invalid(f"{value!r} fits none of the field's types")


def _dict(values: Decoder, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("not an object")
    return {key: values(item) for key, item in value.items()}


def _scalar_dict(kind: type, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(type(item) is kind for item in value.values()):
        raise Invalid(f"not an object of {kind.__name__} values")
    return dict(value)


def _list(items: Decoder, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid("not a list")
    return [items(item) for item in value]


def _array(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(type(v) is float for v in value):
        raise Invalid("not a list of numbers")
    return np.array(value, dtype=np.float64)


def _any(value: Any) -> Any:
    """Any JSON value (a run's attributes): parsed JSON is plain data already."""
    return value

