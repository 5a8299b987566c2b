"""Format-neutral helpers shared by every renderer."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.table import Table

FORMATS = ("table", "json", "csv", "markdown")
_BARS = "▁▂▃▄▅▆▇█"


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits, NaN/None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.4g}"
    return str(value)


def sparkline(values: np.ndarray, width: int = 16) -> str:
    """A log-scale sparkline: gradient norms span orders of magnitude."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return ""
    bins = np.array_split(np.log10(values), min(width, values.size))
    levels = np.array([b.mean() for b in bins])
    lo, hi = levels.min(), levels.max()
    scaled = np.zeros_like(levels) if hi - lo < 1e-12 else (levels - lo) / (hi - lo)
    return "".join(_BARS[round(s * (len(_BARS) - 1))] for s in scaled)


def add_number_columns(table: Table, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Right-aligned columns as wide as their widest cell, so rich never cuts a number."""
    for i, header in enumerate(headers):
        width = max([len(header), *(len(row[i]) for row in rows)])
        table.add_column(header, justify="right", no_wrap=True, min_width=width)


def to_json(payload: Any) -> str:
    return json.dumps(payload, indent=2, allow_nan=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_csv_cell(c) for c in row] for row in rows])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
