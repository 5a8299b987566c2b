"""What ``gfprobe report`` computes: the per-run summaries and, on request, the correlation and
SC-SDC sections, from one read of the runs. Renderers turn a :class:`Sections` into text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gfprobe.analysis import correlation, scsdc
from gfprobe.analysis.report import RunSummary
from gfprobe.analysis.scsdc import Cell, Comparison
from gfprobe.errors import ConfigError

# The research's pivot tables (SCIENCE.md §5): rows × columns of the SC-SDC p-values.
PIVOTS = (("optimizer", "regularisation"), ("optimizer", "activation"))


@dataclass(frozen=True)
class Request:
    runs: bool = True
    correlate: tuple[str, ...] = ()
    method: str = "kendall"
    by: tuple[str, ...] = ()
    scsdc: bool = False
    scsdc_metric: str = "test_acc"
    test: str = "welch"
    resamples: int = 1000
    seed: int = 0


@dataclass
class Sections:
    runs: list[RunSummary] | None = None
    correlation: list[correlation.Correlation] | None = None
    scsdc: list[Comparison] | None = None
    pivots: dict[tuple[str, str], list[Cell]] = field(default_factory=dict)


def analyse(summaries: Sequence[RunSummary], request: Request) -> Sections:
    out = Sections(runs=list(summaries) if request.runs else None)
    if request.correlate:
        if len(summaries) < 2:
            raise ConfigError(f"--correlate needs several runs, got {len(summaries)}; pass files or folders of runs")
        out.correlation = [c for metric in request.correlate
                           for c in correlation.correlate(summaries, metric, request.method, request.by,
                                                          resamples=request.resamples, seed=request.seed)]
    if request.scsdc:
        out.scsdc = scsdc.compare(summaries, request.scsdc_metric, request.test)
        for rows, columns in PIVOTS:
            values = {repr(c.config[columns]) for c in out.scsdc if rows in c.config and columns in c.config}
            if len(values) > 1:  # a single column would only repeat the per-configuration table
                out.pivots[(rows, columns)] = scsdc.pivot(summaries, out.scsdc, rows, columns,
                                                          request.scsdc_metric, request.test)
    return out
