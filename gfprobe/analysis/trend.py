"""egf_2 over training as the report draws it: a sparkline of ``WIDTH`` bars of ``LEVELS``
heights, on a log scale (gradient norms span orders of magnitude).

The bars depend on a series only through the mean log10 of each of ``WIDTH`` equal stretches of
its finite positive values. :func:`compress` keeps just that much of a series: a report over
50,000 runs of many thousand steps would otherwise carry (and its study index store) every step
of every run, to draw 16 bars each.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

WIDTH = 16  # bars in the report's sparkline
LEVELS = 8  # heights a bar can take (gfprobe.render.formats draws one glyph per height)
_DIGITS = 6  # significant digits a compressed point keeps: enough to draw the same bars, see compress


def heights(values: np.ndarray, width: int = WIDTH, levels: int = LEVELS) -> list[int]:
    """The sparkline's bar heights (0 … levels − 1); none for a series without a positive value."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return []
    means = _stretch_means(values, width)
    lo, hi = means.min(), means.max()
    scaled = np.zeros_like(means) if hi - lo < 1e-12 else (means - lo) / (hi - lo)
    return [round(s * (levels - 1)) for s in scaled]


def _stretch_means(positive: np.ndarray, width: int) -> np.ndarray:
    """Mean log10 of each of ``width`` equal stretches (fewer for a shorter series)."""
    logs: np.ndarray = np.log10(positive)
    if logs.size <= width:  # stretches of one value each (a compressed series): its mean is itself
        return logs
    return np.array([b.mean() for b in np.array_split(logs, width)])


def compress(values: np.ndarray) -> np.ndarray:
    """A series of at most ``WIDTH`` points whose sparkline is the same as that of ``values``:
    the geometric mean of each stretch, to 6 significant digits. Checked, not assumed: where the
    rounding would move a bar (a stretch's level a hair from a bar's edge), the points keep full
    precision, and where even that would, the series is kept whole. Always float64."""
    values = np.asarray(values, dtype=np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    if values.size <= WIDTH:
        return values.copy()
    points = 10.0 ** _stretch_means(positive, WIDTH) if positive.size else np.empty(0)
    bars = heights(values)
    for candidate in (np.array([float(f"{p:.{_DIGITS}g}") for p in points]), points):
        if heights(candidate) == bars:
            return candidate
    return values.copy()


def compressed(series: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every series of a run summary, compressed."""
    return {name: compress(values) for name, values in series.items()}
