"""Format-neutral helpers shared by every renderer. Text from run files is data: every helper
here makes it printable (see ``safe``), and CSV and Markdown cells cannot break their table."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gfprobe.analysis import trend
from gfprobe.render.safe import Markdown, markdown, printable

FORMATS = ("table", "json", "csv", "markdown")
_BARS = "▁▂▃▄▅▆▇█"  # trend.LEVELS glyphs


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits, NaN/None as a dash, anything else as printable text."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.4g}"
    return printable(value)


def sparkline(values: np.ndarray, width: int = trend.WIDTH) -> str:
    """A log-scale sparkline: gradient norms span orders of magnitude (see analysis.trend)."""
    return "".join(_BARS[h] for h in trend.heights(values, width, len(_BARS)))


def order_key(value: Any) -> tuple[int, Any, str]:
    """Where an attribute value sorts: numbers in order, then everything else by its text (a list
    or table value has no order of its own, and values of mixed types none with each other)."""
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return 0, value, ""  # not float(): an integer past 1e308 has none
    return 1, 0, str(value)


def to_json(payload: Any) -> str:
    """Strict JSON: NaN and infinities, which JSON has no words for, become null (a run's
    attributes may hold them: ``record --attr lr=NaN``).

    Strings stay exact. A ``##[`` in one, which a GitHub Actions log would read as a workflow
    command wherever it stands, is written ``##\u005b``: the same string to any JSON reader.
    (``::`` only counts at the start of a line, where JSON has punctuation or indentation.)
    """
    text = json.dumps(_finite(payload), indent=2, allow_nan=False, default=_json_default)
    return text.replace("##[", "##\\u005b")


def _finite(value: Any) -> Any:
    """``value`` with NumPy values made plain and non-finite floats made None, at any depth."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([printable(c) for c in header])
    writer.writerows([[_csv_cell(c) for c in row] for row in rows])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if value is None or isinstance(value, int | float | np.number | np.bool_):
        return value
    return printable(value)


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are escaped as plain text unless they are ``Markdown`` already."""
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _md_cell(value: Any) -> str:
    return value if isinstance(value, Markdown) else markdown(fmt(value))
