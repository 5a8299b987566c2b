"""Reducing a per-step series to one number per run.

The default is the research's protocol (SCIENCE.md §2): the mean of the series at 11 points
spread evenly over the recorded steps, first and last included (with fewer than 11 recorded
steps, every step is used once).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gfprobe.errors import ConfigError

SUMMARIES = ("points", "mean", "last", "max")
DEFAULT_POINTS = 11


def protocol_indices(n_steps: int, points: int = DEFAULT_POINTS) -> np.ndarray:
    """Indices of ``points`` steps spread evenly over ``n_steps`` (rounded to the nearest)."""
    if n_steps <= 0:
        return np.empty(0, dtype=int)
    return np.unique(np.round(np.linspace(0, n_steps - 1, min(points, n_steps))).astype(int))


def describe(how: str = "points", points: int = DEFAULT_POINTS, short: bool = False,
             steps: Iterable[int] = ()) -> str:
    """What a summary is, in words, for titles and axis labels.

    ``steps``: the recorded steps of the runs it summarises, when known. A "points" summary of a
    run with fewer steps than ``points`` averages every step once, and the words say so.
    """
    if how not in SUMMARIES:
        raise ConfigError(f"unknown summary {how!r}; use one of {', '.join(SUMMARIES)}")
    if how == "points":
        return _describe_points(points, short, {n for n in steps if n > 0})  # no steps: no value to describe
    if short:
        return {"mean": "mean over steps", "last": "last step", "max": "max over steps"}[how]
    return {"mean": "mean over all recorded steps", "last": "value at the last recorded step",
            "max": "maximum over the recorded steps"}[how]


def describe_runs(runs: Iterable[tuple[str, int, int]], short: bool = False) -> str:
    """The summaries of several runs, each given as (how, points, recorded steps), in words true
    of every run; "" for no runs."""
    steps: dict[tuple[str, int], list[int]] = {}
    for how, points, n in runs:
        steps.setdefault((how, points), []).append(n)
    words = (describe(how, points, short, counts) for (how, points), counts in steps.items())
    return "; ".join(dict.fromkeys(words))


def _describe_points(points: int, short: bool, steps: set[int]) -> str:
    fewer = {n for n in steps if n < points}
    if not fewer:
        return f"{points}-point mean" if short else f"mean over {points} evenly spaced recorded steps"
    if fewer != steps:  # some runs have enough steps, some have not
        return (f"{points}-point mean (all steps if fewer)" if short
                else f"mean over {points} evenly spaced recorded steps (all steps of runs with fewer)")
    if fewer == {1}:
        return "only step" if short else "value at the only recorded step"
    if len(fewer) == 1:
        return f"mean over all {min(fewer)} steps" if short else f"mean over all {min(fewer)} recorded steps"
    return "mean over all steps" if short else f"mean over all recorded steps (fewer than {points} in every run)"


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
