"""Rank correlation of the gradient-flow measures with a metric across runs (SCIENCE.md §3).

For every measure, the runs are ranked by the measure's summary and by the metric's last value;
Kendall's τ-b (default) or Spearman's ρ is reported **with its sign**, with its two-sided p-value
and a percentile bootstrap 95% interval (pairs of values resampled together; the resampled
coefficients are computed in one vectorised pass, see ``resample.py``), separately for
sparse runs, dense runs and all runs (by the ``sparse`` run attribute), and optionally split
further by other attributes. Pure NumPy/SciPy: no torch, no I/O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from gfprobe.analysis import resample, workers
from gfprobe.analysis.attrs import freeze, group_of
from gfprobe.analysis.measure_set import measure_names
from gfprobe.analysis.report import RunSummary
from gfprobe.errors import ConfigError

METHODS = ("kendall", "spearman")
GROUPS = ("sparse", "dense", "all")
MIN_RUNS = 3  # fewer pairs than this have no meaningful rank correlation: reported as NaN
# Fewer runs than this have too few distinct resamples for a bootstrap interval: reported as NaN.
MIN_INTERVAL_RUNS = 5
# Resampled runs (resamples × runs, over the table) from which worker processes compute the cells:
# starting them costs about a second; this much work takes several times that.
PARALLEL_WORK = 100_000_000


@dataclass(frozen=True)
class Correlation:
    """One cell of the correlation table."""

    group: str  # "sparse" | "dense" | "all"
    measure: str
    metric: str
    method: str
    n: int
    coef: float
    p: float
    ci: tuple[float, float]
    split: tuple[tuple[str, Any], ...] = ()  # (attribute, value) of a --by split


def _coefficient(method: str) -> Callable[[np.ndarray, np.ndarray], Any]:
    fn: Callable[[np.ndarray, np.ndarray], Any] = stats.kendalltau if method == "kendall" else stats.spearmanr
    return fn


def rank_correlation(x: np.ndarray, y: np.ndarray, method: str = "kendall", resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float, tuple[float, float]]:
    """(coefficient, two-sided p, percentile bootstrap 95% interval) of paired values; NaN when
    undefined. Resamples draw pairs with replacement (scipy.stats.bootstrap over pair indices)."""
    if method not in METHODS:
        raise ConfigError(f"unknown correlation method {method!r}; use one of {', '.join(METHODS)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, dtype=np.float64)[keep], np.asarray(y, dtype=np.float64)[keep]
    nan = (math.nan, math.nan, (math.nan, math.nan))
    if len(x) < MIN_RUNS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    result = _coefficient(method)(x, y)
    return float(result.statistic), float(result.pvalue), bootstrap_interval(x, y, method, resamples, seed)


def bootstrap_interval(x: np.ndarray, y: np.ndarray, method: str, resamples: int,
                       seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of paired finite values; NaN with no resamples or fewer
    than MIN_INTERVAL_RUNS pairs.

    A resample that draws a single x (or y) value has no rank correlation. scipy then gives NaN
    and a DegenerateDataWarning; such resamples are left out instead (the interval is that of
    the resamples whose coefficient is defined), which changes nothing when there are none.
    """
    if resamples <= 0 or len(x) < MIN_INTERVAL_RUNS:
        return math.nan, math.nan
    statistic = (resample.kendall if method == "kendall" else resample.spearman)(x, y)
    with warnings.catch_warnings():
        # Only here, where scipy raises it: the NaN it warns about is handled below.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap((np.arange(len(x)),), statistic, vectorized=True, n_resamples=resamples,
                               batch=max(1, 20_000_000 // len(x)), method="percentile",
                               confidence_level=0.95, rng=np.random.default_rng(seed))
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    distribution = np.asarray(boot.bootstrap_distribution)
    defined = distribution[np.isfinite(distribution)]
    if defined.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(defined, [0.025, 0.975])
    return float(low), float(high)


def correlate(runs: Sequence[RunSummary], metric: str, method: str = "kendall", by: Sequence[str] = (),
              measures: Sequence[str] | None = None, resamples: int = 1000, seed: int = 0) -> list[Correlation]:
    """The correlation table: every measure × group (× --by split) against ``metric``'s last value."""
    if method not in METHODS:
        raise ConfigError(f"unknown correlation method {method!r}; use one of {', '.join(METHODS)}")
    if not any(metric in run.metrics for run in runs):
        known = sorted({name for run in runs for name in run.metrics})
        raise ConfigError(f"no run has a metric {metric!r}; the runs have: {', '.join(known) or 'no metrics'}")
    measures = measure_names() if measures is None else measures
    cells = []  # (group, measure, split, x, y) of every cell of the table
    for split, members in split_runs(runs, by):
        y_all = np.array([run.metrics.get(metric, {}).get("last", math.nan) for run in members])
        groups = np.array([group_of(run.attrs) or "" for run in members])
        x_all = {measure: np.array([run.measures.get(measure, math.nan) for run in members]) for measure in measures}
        for group in GROUPS:
            rows = np.ones(len(members), dtype=bool) if group == "all" else groups == group
            cells += [(group, measure, split, x_all[measure][rows], y_all[rows]) for measure in measures]
    # The cells are independent: a large table's bootstrap intervals are computed by worker processes.
    work = resamples * sum(len(x) for *_, x, _ in cells)
    results = workers.run_all(rank_correlation, [(x, y, method, resamples, seed) for *_, x, y in cells],
                              parallel=work >= PARALLEL_WORK)
    return [Correlation(group, measure, metric, method, int((np.isfinite(x) & np.isfinite(y)).sum()), coef, p, ci,
                        split)
            for (group, measure, split, x, y), (coef, p, ci) in zip(cells, results, strict=True)]


def split_runs(runs: Sequence[RunSummary], by: Sequence[str]) -> list[tuple[tuple[tuple[str, Any], ...],
                                                                           list[RunSummary]]]:
    """Runs grouped by the values of the ``by`` attributes (one group of all runs without ``by``)."""
    if not by:
        return [((), list(runs))]
    groups: dict[tuple[tuple[str, Any], ...], list[RunSummary]] = {}
    for run in runs:
        key = tuple((attr, freeze(run.attrs.get(attr))) for attr in by)
        groups.setdefault(key, []).append(run)
    return sorted(groups.items(), key=lambda item: [str(v) for _, v in item[0]])
