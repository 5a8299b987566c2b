"""gfprobe's analysis API: run files in, NumPy arrays (or pandas DataFrames) and summaries out.

No torch is needed: this works wherever h5py does. Every example below runs as a doctest on
the run files in the repository's ``fixtures/runs``.

>>> import gfprobe.api as gf
>>> run = gf.load("fixtures/runs/sparse.h5")
>>> run.status, len(run.steps), run.layers
('complete', 40, ['fc1.weight', 'fc2.weight'])
>>> egf = run.measures()["egf_2"]            # one value per optimizer step
>>> egf.shape
(40,)
>>> summaries = gf.summarize(["fixtures/runs/dense.h5", "fixtures/runs/sparse.h5"])
>>> [s.attrs["sparse"] for s in summaries]
[False, True]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gfprobe.analysis.check import Finding, RunCheck, check_runs
from gfprobe.analysis.check_config import Config, load_config
from gfprobe.analysis.correlation import Correlation
from gfprobe.analysis.correlation import correlate as _correlate
from gfprobe.analysis.cost import ObservationCost, observation_cost
from gfprobe.analysis.diff import DiffResult, diff_runs
from gfprobe.analysis.diff_config import load_config as load_diff_config
from gfprobe.analysis.layers import weight_layer_stats
from gfprobe.analysis.measure_set import compute_series
from gfprobe.analysis.report import LayerSummary, RunSummary, build_report
from gfprobe.analysis.scsdc import Comparison
from gfprobe.analysis.scsdc import compare as _compare
from gfprobe.errors import ConfigError, GfprobeError, RunFileError
from gfprobe.measures import MEASURES
from gfprobe.store.find import find_runs
from gfprobe.store.reader import Metric, StreamData, open_run
from gfprobe.store.schema import STAT_FIELDS, WEIGHT
from gfprobe.summary import DEFAULT_POINTS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MEASURES", "STAT_FIELDS", "Comparison", "Config", "ConfigError", "Correlation", "Finding", "GfprobeError",
    "LayerSummary", "Metric", "ObservationCost", "Run", "RunCheck", "RunFileError", "RunSummary", "check", "compare",
    "correlate", "load", "summarize",
]


@dataclass(frozen=True)
class Run:
    """One optimizer's records in a run file, read whole into memory.

    ``steps`` are the optimizer steps recorded; ``skipped`` marks those GradScaler skipped (their
    weights did not change, so the measures leave them out). ``stats[field]`` is
    ``[records, params]`` for every parameter the optimizer updates, in ``params`` order;
    ``layers`` are the weight layers the measures are made of.
    """

    path: Path
    metadata: dict[str, Any]
    attrs: dict[str, Any]
    metrics: dict[str, Metric]
    data: StreamData = field(repr=False)

    @property
    def status(self) -> str:
        """``complete``, ``running`` (still written, or its writer died), ``interrupted`` or ``failed``."""
        return str(self.metadata.get("status", ""))

    @property
    def optimizer(self) -> str:
        """The stream's name: its optimizer's class, or a measurement stream's name (``probe``)."""
        return self.data.optimizer

    @property
    def protocol(self) -> str:
        """How the stream's gradient was taken: ``minibatch`` (an optimizer's) or ``probe-batch``."""
        return self.data.protocol

    @property
    def params(self) -> list[str]:
        return self.data.params.names

    @property
    def steps(self) -> np.ndarray:
        return self.data.steps

    @property
    def skipped(self) -> np.ndarray:
        return self.data.skipped.astype(bool)

    @property
    def stats(self) -> dict[str, np.ndarray]:
        return self.data.stats

    @property
    def layers(self) -> list[str]:
        return [self.data.params.names[c] for c in self.data.params.indices(WEIGHT)]

    @property
    def cost(self) -> ObservationCost | None:
        """gfprobe's own time per recorded step (``hook``, ``writer``, ``interval`` in seconds,
        ``fraction`` of the step time); None for files written before gfprobe measured it.

        >>> import gfprobe.api as gf
        >>> gf.load("fixtures/runs/sparse.h5").cost is None  # recorded before gfprobe measured it
        True
        """
        return observation_cost(self.data)

    def measures(self) -> dict[str, np.ndarray]:
        """Every measure (``gf_1`` … ``egf_2_per_weight``, and those of plugins) per optimizer step taken.

        >>> run = load("fixtures/runs/dense.h5")
        >>> sorted(run.measures()) == sorted(MEASURES)
        True
        >>> bool((run.measures()["egf_2"] > 0).all())
        True
        """
        return compute_series(weight_layer_stats(self.data)[0])

    def layer(self, stat: str) -> np.ndarray:
        """One statistic (a name in ``STAT_FIELDS``) of the weight layers: ``[steps taken, layers]``.

        >>> run = load("fixtures/runs/sparse.h5")
        >>> run.layer("masked_sumsq").shape
        (40, 2)
        """
        if stat not in self.stats:
            raise ConfigError(f"unknown statistic {stat!r}; the statistics are: {', '.join(STAT_FIELDS)}")
        taken: np.ndarray = self.stats[stat][~self.skipped][:, self.data.params.indices(WEIGHT)]
        return taken

    def measures_frame(self) -> pd.DataFrame:
        """The measures as a pandas DataFrame indexed by optimizer step (needs pandas).

        >>> load("fixtures/runs/dense.h5").measures_frame().columns[:3].tolist()
        ['gf_1', 'gf_2', 'egf_1']
        """
        pd = _pandas()
        return pd.DataFrame(self.measures(), index=pd.Index(self.steps[~self.skipped], name="step"))

    def layers_frame(self) -> pd.DataFrame:
        """Every statistic of every weight layer, one row per (step, layer) (needs pandas).

        >>> frame = load("fixtures/runs/sparse.h5").layers_frame()
        >>> list(frame.index.names), len(frame)
        (['step', 'layer'], 80)
        """
        pd = _pandas()
        index = pd.MultiIndex.from_product([self.steps[~self.skipped], self.layers], names=["step", "layer"])
        return pd.DataFrame({stat: self.layer(stat).reshape(-1) for stat in STAT_FIELDS}, index=index)

    def metrics_frame(self) -> pd.DataFrame:
        """The logged metrics, one row per value: name, step, time, value (needs pandas).

        >>> load("fixtures/runs/dense.h5").metrics_frame().columns.tolist()
        ['name', 'step', 'time', 'value']
        """
        pd = _pandas()
        rows = [(name, int(s), float(t), float(v)) for name, metric in self.metrics.items()
                for s, t, v in zip(metric.steps, metric.times, metric.values, strict=True)]
        return pd.DataFrame(rows, columns=["name", "step", "time", "value"])


def load(path: str | Path, stream: int | str = 0) -> Run:
    """Read ``stream`` (an index, or a stream's name such as ``"probe"``) of the run file ``path``
    (a RunFileError says why it cannot be read).

    >>> load("fixtures/runs/dense.h5").protocol
    'minibatch'
    """
    with open_run(path) as run:
        return Run(Path(path), run.metadata, run.attrs, run.metrics(), run.stream(stream))


def summarize(paths: str | Path | Sequence[str | Path], stream: int | str = 0, how: str = "points",
              points: int = DEFAULT_POINTS, per_layer: bool = False) -> list[RunSummary]:
    """One summary per run file (a folder stands for the ``*.h5`` files under it), as ``gfprobe
    report`` prints them: each measure summarised over the run (``how``: "points", the mean of
    ``points`` evenly spaced steps, or "mean", "last", ...), each metric's last and best value,
    the run's attributes.

    >>> [(Path(s.path).name, s.steps, s.skipped) for s in summarize(["fixtures/runs"])]
    [('amp.h5', 24, 1), ('dense.h5', 40, 0), ('sparse.h5', 40, 0)]
    """
    return build_report(find_runs(paths), stream, how, points, per_layer)


def correlate(summaries: Sequence[RunSummary], metric: str, method: str = "kendall",
              by: Sequence[str] = ()) -> list[Correlation]:
    """Rank correlation of every measure with ``metric``'s last value across runs, for all runs,
    the sparse and the dense ones (``attrs["sparse"]``), split by the ``by`` attributes.

    >>> runs = summarize(["fixtures/runs/dense.h5", "fixtures/runs/sparse.h5", "fixtures/runs/amp.h5"])
    >>> rows = correlate(runs, "test_acc")
    >>> sorted({row.measure for row in rows}) == sorted(MEASURES)
    True
    """
    return _correlate(summaries, metric, method, by)


def compare(summaries: Sequence[RunSummary], metric: str = "test_acc", test: str = "welch") -> list[Comparison]:
    """SC-SDC: sparse against dense runs of the same configuration, one-sided test on ``metric``."""
    return _compare(summaries, metric, test)


def check(paths: str | Path | Sequence[str | Path], config: Config | None = None, stream: int = 0) -> list[RunCheck]:
    """Gradient-health rules (as ``gfprobe check``) on each run file (or folder of them); ``config`` defaults to the
    ``[tool.gfprobe.check]`` table of the nearest ``pyproject.toml``, else the defaults.

    >>> (result,) = check(["fixtures/runs/dense.h5"])
    >>> sorted(finding.rule for finding in result.findings)[:3]
    ['amp_skips', 'dead', 'exploding']
    """
    return check_runs(find_runs(paths), config if config is not None else load_config()[0], stream)


def diff(base: str | Path, new: str | Path, config: Config | None = None, stream: int = 0) -> DiffResult:
    """Compare run NEW with run BASE (or two folders of runs matched by run id) as ``gfprobe diff``
    does: ``result.passed``, and per pair the rules' findings and the layers, measures and metrics
    that differ. ``config`` defaults to the ``[tool.gfprobe.diff]`` table of the nearest
    ``pyproject.toml``, else the defaults (see docs/diff.md).

    >>> result = diff("fixtures/runs/dense.h5", "fixtures/runs/dense.h5")
    >>> result.passed, [finding.status for finding in result.pairs[0].findings][:2]
    (True, ['pass', 'pass'])
    """
    chosen = config if config is not None else load_diff_config()[0]
    return diff_runs(Path(base), Path(new), chosen, stream)


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ConfigError("DataFrames need pandas, which is not installed: pip install 'gfprobe[dataframe]'") from None
    return pandas
