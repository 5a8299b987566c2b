"""SC-SDC statistics (SCIENCE.md §4–5): sparse against dense runs of equal capacity.

Runs are paired into *configurations*: all run attributes equal except ``sparse``, ``width``,
``density`` and ``seed`` (so a sparse run and its capacity-matched dense partner, over their
seeds, form one configuration; the study engine's ``active_weights`` and ``pair_density`` are
equal within a pair and tell capacities apart). Per configuration: each side's mean and standard
deviation of the metric, mean ``egf_2``, the difference of means, and the one-sided p-value of
H1 "sparse > dense" — Welch's t-test by default, Mann–Whitney U on request. Configurations lacking
a side, or with fewer than two runs on a side, are listed with a note, never dropped.

The pivot tables of SCIENCE.md §5 (optimizer × regularisation, optimizer × activation) pool, per
cell, the runs of every complete configuration in that cell (all densities, data sets and
architectures) into one test of the same hypothesis. That pooling is gfprobe's choice: the paper
does not say how its cells were formed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from gfprobe.analysis.attrs import freeze, group_of
from gfprobe.analysis.report import RunSummary
from gfprobe.errors import ConfigError

TESTS = ("welch", "mwu")
VARYING = frozenset({"sparse", "width", "density", "seed"})  # what may differ within a configuration
ALPHA = 0.05


@dataclass(frozen=True)
class Side:
    n: int
    acc_mean: float
    acc_std: float  # sample standard deviation (ddof 1); NaN for a single run
    egf_2: float  # mean of the runs' egf_2 summaries


@dataclass(frozen=True)
class Comparison:
    config: dict[str, Any]
    sparse: Side | None
    dense: Side | None
    diff: float  # sparse mean - dense mean
    p: float
    test: str
    note: str = ""  # why there is no p-value, if there is none


@dataclass(frozen=True)
class Cell:
    """One cell of a pivot table: every complete configuration with these two values, pooled."""

    row: Any
    column: Any
    configs: int
    n_sparse: int
    n_dense: int
    diff: float
    p: float


def one_sided_p(sparse: np.ndarray, dense: np.ndarray, test: str) -> float:
    """p-value of H1 "sparse > dense"; NaN when a side has fewer than two values."""
    if test not in TESTS:
        raise ConfigError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    if len(sparse) < 2 or len(dense) < 2:
        return math.nan
    if test == "welch":
        if np.ptp(np.concatenate([sparse, dense])) == 0:
            return math.nan
        return float(stats.ttest_ind(sparse, dense, equal_var=False, alternative="greater").pvalue)
    return float(stats.mannwhitneyu(sparse, dense, alternative="greater").pvalue)


def config_of(run: RunSummary) -> dict[str, Any]:
    """The attributes that define a run's configuration, frozen: a list or table value (any JSON)
    must key the pivot cells and print as JSON, like a number or a string."""
    return {key: freeze(value) for key, value in sorted(run.attrs.items()) if key not in VARYING}


def _key(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    # A frozen value's repr is its canonical JSON: tables equal up to key order are one configuration.
    return tuple((k, repr(v)) for k, v in config.items())


def _side(runs: list[RunSummary], metric: str) -> tuple[Side | None, np.ndarray]:
    values = np.array([run.metrics.get(metric, {}).get("last", math.nan) for run in runs])
    values = values[np.isfinite(values)]
    if not runs:
        return None, values
    egf = np.array([run.measures["egf_2"] for run in runs])
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    mean = float(np.mean(values)) if len(values) else math.nan
    return Side(len(values), mean, std, float(np.nanmean(egf)) if np.isfinite(egf).any() else math.nan), values


def compare(runs: Sequence[RunSummary], metric: str = "test_acc", test: str = "welch") -> list[Comparison]:
    """One comparison per configuration, in a stable order."""
    if test not in TESTS:
        raise ConfigError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    if not any(metric in run.metrics for run in runs):
        known = sorted({name for run in runs for name in run.metrics})
        raise ConfigError(f"no run has a metric {metric!r} to compare; the runs have: {', '.join(known) or 'none'} "
                          "(choose one with --scsdc-metric)")
    if not any(group_of(run.attrs) for run in runs):
        raise ConfigError("no run has a 'sparse' attribute (true or false): SC-SDC needs sparse and dense runs "
                          "recorded with attributes, e.g. by 'gfprobe scsdc run' or watch(attrs={'sparse': True})")
    configs: dict[tuple[tuple[str, str], ...], tuple[dict[str, Any], dict[str, list[RunSummary]]]] = {}
    for run in runs:
        group = group_of(run.attrs)
        if group is None:
            continue
        config = config_of(run)
        configs.setdefault(_key(config), (config, {"sparse": [], "dense": []}))[1][group].append(run)
    out = []
    for _, (config, sides) in sorted(configs.items()):
        sparse, sparse_values = _side(sides["sparse"], metric)
        dense, dense_values = _side(sides["dense"], metric)
        note = ("no dense runs" if dense is None else "no sparse runs" if sparse is None
                else "a single seed on a side" if min(len(sparse_values), len(dense_values)) < 2 else "")
        diff = sparse.acc_mean - dense.acc_mean if sparse and dense else math.nan
        p = one_sided_p(sparse_values, dense_values, test) if not note else math.nan
        out.append(Comparison(config, sparse, dense, diff, p, test, note))
    return out


def pivot(runs: Sequence[RunSummary], comparisons: Sequence[Comparison], rows: str, columns: str,
          metric: str = "test_acc", test: str = "welch") -> list[Cell]:
    """Cells of the ``rows`` × ``columns`` table, pooling the complete configurations of each."""
    complete = {_key(c.config) for c in comparisons if not c.note}
    pooled: dict[tuple[Any, Any], dict[str, Any]] = {}
    for run in runs:
        group = group_of(run.attrs)
        config = config_of(run)
        if group is None or _key(config) not in complete or rows not in config or columns not in config:
            continue
        cell = pooled.setdefault((config[rows], config[columns]), {"sparse": [], "dense": [], "configs": set()})
        cell[group].append(run.metrics.get(metric, {}).get("last", math.nan))
        cell["configs"].add(_key(config))
    out = []
    for (row, column), cell in sorted(pooled.items(), key=lambda item: (str(item[0][0]), str(item[0][1]))):
        sparse = np.array([v for v in cell["sparse"] if math.isfinite(v)])
        dense = np.array([v for v in cell["dense"] if math.isfinite(v)])
        diff = float(sparse.mean() - dense.mean()) if len(sparse) and len(dense) else math.nan
        out.append(Cell(row, column, len(cell["configs"]), len(sparse), len(dense), diff,
                        one_sided_p(sparse, dense, test)))
    return out
