"""Reducing a per-step series to one number per run.

The default is the research's protocol (SCIENCE.md §2): the mean of the series at 11 points
spread evenly over the recorded steps, first and last included (with fewer than 11 recorded
steps, every step is used once).
"""

from __future__ import annotations

import numpy as np

from gfprobe.errors import ConfigError

SUMMARIES = ("points", "mean", "last", "max")
DEFAULT_POINTS = 11


def protocol_indices(n_steps: int, points: int = DEFAULT_POINTS) -> np.ndarray:
    """Indices of ``points`` steps spread evenly over ``n_steps`` (rounded to the nearest)."""
    if n_steps <= 0:
        return np.empty(0, dtype=int)
    return np.unique(np.round(np.linspace(0, n_steps - 1, min(points, n_steps))).astype(int))


def describe(how: str = "points", points: int = DEFAULT_POINTS, short: bool = False) -> str:
    """What a summary is, in words, for titles and axis labels."""
    if how not in SUMMARIES:
        raise ConfigError(f"unknown summary {how!r}; use one of {', '.join(SUMMARIES)}")
    if how == "points":
        return f"{points}-point mean" if short else f"mean over {points} evenly spaced recorded steps"
    if short:
        return {"mean": "mean over steps", "last": "last step", "max": "max over steps"}[how]
    return {"mean": "mean over all recorded steps", "last": "value at the last recorded step",
            "max": "maximum over the recorded steps"}[how]


def summarise(values: np.ndarray, how: str = "points", points: int = DEFAULT_POINTS) -> float:
    """One number for a per-step series; NaN for an empty series."""
    if how not in SUMMARIES:
        raise ConfigError(f"unknown summary {how!r}; use one of {', '.join(SUMMARIES)}")
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    if how == "points":
        return float(np.mean(values[protocol_indices(values.size, points)]))
    if how == "mean":
        return float(np.mean(values))
    if how == "last":
        return float(values[-1])
    return float(np.max(values))
