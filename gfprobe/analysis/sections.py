"""What ``gfprobe report`` computes: the per-run summaries and, on request, the correlation and
SC-SDC sections, from one read of the runs. Renderers turn a :class:`Sections` into text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gfprobe.analysis import correlation, scsdc
from gfprobe.analysis.report import RunSummary
from gfprobe.analysis.scsdc import Cell, Comparison
from gfprobe.errors import ConfigError, did_you_mean

# The research's pivot tables (SCIENCE.md §5): rows × columns of the SC-SDC p-values.
PIVOTS = (("optimizer", "regularisation"), ("optimizer", "activation"))
# More resamples than this do not move a 95% interval's printed digits, only the wait.
MAX_RESAMPLES = 100_000


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


# What the report after a study (``gfprobe scsdc run``) holds: SC-SDC of the test accuracy, and how
# well each measure ranks the runs by it.
STUDY = Request(runs=False, correlate=("test_acc",), scsdc=True)


@dataclass
class Sections:
    runs: list[RunSummary] | None = None
    correlation: list[correlation.Correlation] | None = None
    scsdc: list[Comparison] | None = None
    pivots: dict[tuple[str, str], list[Cell]] = field(default_factory=dict)


def analyse(summaries: Sequence[RunSummary], request: Request) -> Sections:
    out = Sections(runs=list(summaries) if request.runs else None)
    if request.resamples > MAX_RESAMPLES:
        raise ConfigError(f"--resamples {request.resamples:,} is more than {MAX_RESAMPLES:,}; "
                          "1000 to 10000 give a stable 95% interval")
    if request.by and not request.correlate:
        raise ConfigError("--by splits the correlation table: add --correlate METRIC, e.g. --correlate test_acc")
    if request.correlate:
        if len(summaries) < 2:
            raise ConfigError(f"--correlate needs several runs, got {len(summaries)}; pass files or folders of runs")
        for attr in request.by:
            check_split_attribute(summaries, attr)
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


def check_split_attribute(summaries: Sequence[RunSummary], attr: str) -> None:
    """Refuse a ``--by`` attribute that some runs lack: they would form a silent "None" group."""
    missing = [run for run in summaries if attr not in run.attrs]
    if not missing:
        return
    shared = sorted(set.intersection(*(set(run.attrs) for run in summaries)))
    known = ", ".join(shared) or "none"
    if len(missing) == len(summaries):
        raise ConfigError(f"--by {attr}: no run has an attribute {attr!r}{did_you_mean(attr, shared)}; "
                          f"attributes every run has: {known}")
    names = ", ".join(Path(run.path).name for run in missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise ConfigError(f"--by {attr}: {len(missing)} of {len(summaries)} runs have no attribute {attr!r} ({names}); "
                      f"pass only runs that have it, or split by one every run has: {known}")
