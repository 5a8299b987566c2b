"""Run attributes as values to group runs by.

Run attributes are JSON: besides numbers and strings, a list or a table (``density = [[0.1]]``,
``optimizer = {x = 1}``) must group runs, key SC-SDC configurations and print as recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def canonical(value: Any) -> str:
    """``value`` as JSON text with sorted keys: one spelling per value, whatever its key order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


class FrozenList(tuple[Any, ...]):
    """A JSON array of an attribute, hashable so that runs can be grouped by it.

    It prints (``str`` and ``repr``) as JSON, not as a Python tuple: titles and tables show the
    value as it was recorded, and code that keys on ``repr`` gets the canonical spelling.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return canonical(self)

    __repr__ = __str__


class FrozenDict(dict[str, Any]):
    """A JSON object of an attribute, hashable (by its items, so key order does not matter);
    prints as JSON with sorted keys. Still a dict, so JSON output writes it as an object."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __str__(self) -> str:
        return canonical(self)

    __repr__ = __str__


def freeze(value: Any) -> Any:
    """An attribute value, at any depth, in a hashable form that equals the original.

    Run attributes are JSON: a list or table (e.g. ``density = [[0.1]]``, ``optimizer = {x = 1}``)
    must group runs like any number or string. Depth is bounded by the reader (_JSON_DEPTH).
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return math.nan  # one NaN object: containers compare items by identity first, so NaNs group
    if isinstance(value, list | tuple):
        return FrozenList(freeze(item) for item in value)
    if isinstance(value, dict):
        # Keys sorted: which spelling of a table a group shows must not depend on the order of the runs.
        return FrozenDict({str(key): freeze(value[key]) for key in sorted(value, key=str)})
    return value


def group_of(attrs: Mapping[str, Any]) -> str | None:
    """"sparse" or "dense" from a run's ``sparse`` attribute; None when it has no boolean one."""
    value = attrs.get("sparse")
    if isinstance(value, bool | np.bool_):
        return "sparse" if value else "dense"
    return None
