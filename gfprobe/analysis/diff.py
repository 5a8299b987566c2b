"""A regression gate between runs (``gfprobe diff BASE NEW``): pure NumPy, no torch.

Two runs of the same training, before and after a change (a refactor of the model or the loop),
are compared on the optimizer steps both recorded: each weight layer's effective norm ‖g ⊙ m‖₂
step by step, each measure's summary over those steps, and each metric step by step. Norms are
compared by their ratio NEW/BASE (as |log ratio|: a factor 2 up and a factor 2 down are the same
distance), metrics, which may be negative or zero, by their relative difference. The verdicts are
check's :class:`~gfprobe.analysis.check.Finding`, so the same renderers show them.

Two folders are compared run by run, matched by run id: a file's path below its folder without
``.h5`` (the study engine names each run file after its run id, ``runs/<run id>.h5``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gfprobe.analysis.check import Finding
from gfprobe.analysis.check_config import Config
from gfprobe.analysis.layers import MEASURE_FIELDS
from gfprobe.analysis.measure_set import compute_series
from gfprobe.analysis.series import RunSeries
from gfprobe.errors import ConfigError, RunFileError
from gfprobe.measures import LayerStats, layer_norms
from gfprobe.store.find import find_runs
from gfprobe.store.reader import Metric, Unreadable, open_run, read_each
from gfprobe.store.schema import WEIGHT
from gfprobe.summary import DEFAULT_POINTS, summarise

UNMATCHED_RULE = "unmatched"


# -- what is read of each run ---------------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    """What the comparison reads of one run file (read once): its weight layers over every record."""

    path: str
    stream: str  # the stream's name (the optimizer's class)
    steps: np.ndarray  # [records] optimizer step of each record
    skipped: np.ndarray  # [records] GradScaler skipped the step
    layers: list[str]  # weight layers, made unique (see _unique)
    shapes: list[tuple[int, ...]]
    stats: LayerStats  # [records, layers]
    metrics: dict[str, Metric]


def read_side(path: Path, stream_index: int = 0) -> Side:
    """One run as the comparison sees it; a RunFileError names the file when it cannot be read."""
    with open_run(path) as run:
        stream = run.stream(stream_index, fields=MEASURE_FIELDS)
        metrics = run.metrics()
    cols = stream.params.indices(WEIGHT)
    stats = LayerStats(**{field: stream.stats[field][:, cols] for field in MEASURE_FIELDS})
    return Side(str(path), stream.optimizer, stream.steps, stream.skipped,
                _unique([stream.params.names[c] for c in cols]), [stream.params.shapes[c] for c in cols],
                stats, metrics)


def _unique(names: list[str]) -> list[str]:
    """Layer names as keys: a name seen again (two models under one optimizer) gets ``#2``, ``#3``."""
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


# -- step alignment -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alignment:
    """The steps both runs recorded, and where each run holds them."""

    steps: np.ndarray  # common optimizer steps, ascending
    base_rows: np.ndarray
    new_rows: np.ndarray
    base_steps: np.ndarray  # every step each run recorded (for the note)
    new_steps: np.ndarray

    @property
    def partial(self) -> bool:
        """Some recorded step is left out: the runs differ in length or in ``--every``."""
        return len(self.steps) < max(len(self.base_steps), len(self.new_steps))

    def note(self) -> str | None:
        """What the reader must know about which steps were compared; None when all of them were."""
        if not len(self.steps):
            return (f"no recorded step in common: BASE recorded {_span(self.base_steps)}, "
                    f"NEW {_span(self.new_steps)}")
        if not self.partial:
            return None
        return (f"aligned on the {len(self.steps)} steps both runs recorded ({_span(self.steps)}); BASE recorded "
                f"{len(self.base_steps)}, NEW {len(self.new_steps)}: the others are not compared")


def _span(steps: np.ndarray) -> str:
    if not len(steps):
        return "no step"
    return f"step {int(steps[0])}" if len(steps) == 1 else f"steps {int(steps.min())}–{int(steps.max())}"


def align(base_steps: np.ndarray, new_steps: np.ndarray) -> Alignment:
    """The common steps (a step recorded twice counts at its first record)."""
    common, base_rows, new_rows = np.intersect1d(base_steps, new_steps, return_indices=True)
    return Alignment(common.astype(np.int64), base_rows, new_rows, base_steps, new_steps)


# -- how far NEW departs from BASE ----------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """How one series of NEW (a layer's norm, a metric) or one summary (a measure's) departs from
    BASE's. ``gap``: |log(NEW/BASE)| for norms and measures, |NEW − BASE| / max(|NEW|, |BASE|)
    for metrics; infinite where one run is non-finite or zero and the other not."""

    name: str
    compared: int  # steps compared (measures: the steps their summaries are over)
    gap: float  # the largest gap
    step: int | None  # where it is (None for a measure's summary)
    base: float  # the values there
    new: float
    exceeded: bool  # beyond the tolerance somewhere
    first_step: int | None = None  # the first step beyond it
    first_base: float = math.nan
    first_new: float = math.nan
    first_gap: float = 0.0


def log_gaps(base: np.ndarray, new: np.ndarray) -> np.ndarray:
    """|log(new / base)| of non-negative values; 0 where equal (both NaN too), inf where one is
    zero, infinite or NaN and the other is not."""
    base, new = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.abs(np.log(new) - np.log(base))
    return _settled(base, new, gaps)


def relative_gaps(base: np.ndarray, new: np.ndarray) -> np.ndarray:
    """|new − base| / max(|new|, |base|): 0 where equal (both NaN too), inf where only one is finite."""
    base, new = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.abs(new - base) / np.maximum(np.abs(new), np.abs(base))
    return _settled(base, new, gaps)


def _settled(base: np.ndarray, new: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    same = (base == new) | (np.isnan(base) & np.isnan(new))
    return np.where(same, 0.0, np.where(np.isnan(gaps), np.inf, gaps))


def norm_limit(rtol: float) -> float:
    """The largest |log ratio| within a relative tolerance: NEW/BASE in [1/(1+rtol), 1+rtol]."""
    return math.log1p(rtol)


def trace(name: str, steps: np.ndarray, base: np.ndarray, new: np.ndarray, gaps: np.ndarray, limit: float) -> Trace:
    """The worst gap, and the first step whose gap is beyond ``limit``."""
    if not len(gaps):
        return Trace(name, 0, 0.0, None, math.nan, math.nan, False)
    worst = int(np.argmax(gaps))
    beyond = np.flatnonzero(gaps > limit)
    first = int(beyond[0]) if len(beyond) else None
    at = int(steps[worst]) if gaps[worst] > 0 else None  # identical series: no step stands out
    found = Trace(name, len(gaps), float(gaps[worst]), at, float(base[worst]), float(new[worst]), first is not None)
    if first is None:
        return found
    return dataclasses.replace(found, first_step=int(steps[first]), first_base=float(base[first]),
                               first_new=float(new[first]), first_gap=float(gaps[first]))


# -- one pair of runs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PairDiff:
    """BASE against NEW: what was compared, how far apart they are, and the rules' verdicts."""

    id: str  # the run id (folders), or NEW's file name
    base: str
    new: str
    streams: tuple[str, str]
    alignment: Alignment
    only_base: list[str]  # weight layers in one run only
    only_new: list[str]
    reshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    layers: list[Trace]
    measures: list[Trace]
    measure_steps: int  # steps the measures' summaries are over (common, taken in both runs)
    metrics: list[Trace]
    metrics_only_base: list[str]
    metrics_only_new: list[str]
    findings: list[Finding]

    @property
    def passed(self) -> bool:
        return all(f.status != "fail" for f in self.findings)

    @property
    def notes(self) -> list[str]:
        notes = [n for n in (self.alignment.note(),) if n]
        if self.streams[0] != self.streams[1]:
            notes.append(f"the stream compared is {self.streams[0]} in BASE and {self.streams[1]} in NEW")
        return notes


def compare(base: Side, new: Side, config: Config, run_id: str | None = None) -> PairDiff:
    """Every rule on one pair of runs."""
    aligned = align(base.steps, new.steps)
    taken = ~base.skipped[aligned.base_rows] & ~new.skipped[aligned.new_rows]  # measures leave AMP skips out
    layers = _layer_traces(base, new, aligned, norm_limit(config["layers"]["rtol"]))
    measures = _measure_traces(base, new, aligned.base_rows[taken], aligned.new_rows[taken],
                               config["measures"]["rtol"])
    metrics = [_metric_trace(base.metrics[m], new.metrics[m], config["metrics"]["rtol"])
               for m in base.metrics if m in new.metrics]
    diff = PairDiff(
        run_id or Path(new.path).name.removesuffix(".h5"), base.path, new.path, (base.stream, new.stream), aligned,
        [n for n in base.layers if n not in new.layers], [n for n in new.layers if n not in base.layers],
        _reshaped(base, new), layers, measures, int(taken.sum()), metrics,
        [m for m in base.metrics if m not in new.metrics], [m for m in new.metrics if m not in base.metrics], [])
    return dataclasses.replace(diff, findings=[_finding(rule, diff, config) for rule in RULE_CHECKS])


def _reshaped(base: Side, new: Side) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    shapes = dict(zip(new.layers, new.shapes, strict=True))
    return [(name, shape, shapes[name]) for name, shape in zip(base.layers, base.shapes, strict=True)
            if name in shapes and shapes[name] != shape]


def _layer_traces(base: Side, new: Side, aligned: Alignment, limit: float) -> list[Trace]:
    base_norms, new_norms = layer_norms(base.stats, 2), layer_norms(new.stats, 2)
    columns = {name: k for k, name in enumerate(new.layers)}  # matched by name: NEW may order them otherwise
    out = []
    for j, name in enumerate(base.layers):
        if name in columns:
            b = base_norms[aligned.base_rows, j]
            n = new_norms[aligned.new_rows, columns[name]]
            out.append(trace(name, aligned.steps, b, n, log_gaps(b, n), limit))
    return out


def _rows(stats: LayerStats, rows: np.ndarray) -> LayerStats:
    return LayerStats(**{f.name: getattr(stats, f.name)[rows] for f in dataclasses.fields(LayerStats)})


def _measure_traces(base: Side, new: Side, base_rows: np.ndarray, new_rows: np.ndarray,
                    rtol: float) -> list[Trace]:
    """Each measure summarised (the report's 11-point mean) over the same steps in both runs, so
    that runs of different lengths are compared on what they share. Norms (every built-in measure)
    are compared as factors; a plugin's measure that is negative in either run, as metrics are."""
    if not len(base_rows) or not base.layers or not new.layers:
        return []
    base_series = compute_series(_rows(base.stats, base_rows))
    new_series = compute_series(_rows(new.stats, new_rows))
    out = []
    for name, values in base_series.items():
        if name in new_series:
            b = summarise(values, "points", DEFAULT_POINTS)
            n = summarise(new_series[name], "points", DEFAULT_POINTS)
            gap, exceeded = summary_gap(b, n, rtol)
            out.append(Trace(name, len(base_rows), gap, None, b, n, exceeded))
    return out


def summary_gap(base: float, new: float, rtol: float) -> tuple[float, bool]:
    """How far two summaries of a measure are, and whether beyond ``rtol``: as a factor for norms
    (every built-in measure), as a relative difference where either is negative (a plugin's)."""
    if base < 0 or new < 0:
        gap = float(relative_gaps(np.array([base]), np.array([new]))[0])
        return gap, gap > rtol
    gap = float(log_gaps(np.array([base]), np.array([new]))[0])
    return gap, gap > norm_limit(rtol)


def _last_per_step(metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """A metric's value per step: the last one logged at that step."""
    steps, first = np.unique(metric.steps[::-1], return_index=True)
    return steps, np.asarray(metric.values[::-1][first], dtype=np.float64)


def _metric_trace(base: Metric, new: Metric, rtol: float) -> Trace:
    base_steps, base_values = _last_per_step(base)
    new_steps, new_values = _last_per_step(new)
    steps, b_rows, n_rows = np.intersect1d(base_steps, new_steps, assume_unique=True, return_indices=True)
    b, n = base_values[b_rows], new_values[n_rows]
    return trace(base.name, steps, b, n, relative_gaps(b, n), rtol)


# -- the rules ------------------------------------------------------------------------------------

def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def structure(diff: PairDiff, settings: dict[str, object]) -> Finding:
    if not (diff.only_base or diff.only_new or diff.reshaped):
        return Finding("structure", "pass", f"the same {len(diff.layers)} weight layers in both runs")
    parts = [f"in BASE only: {', '.join(diff.only_base)}" if diff.only_base else "",
             f"in NEW only: {', '.join(diff.only_new)}" if diff.only_new else "",
             "shapes changed: " + ", ".join(f"{n} {_shape(b)} → {_shape(a)}" for n, b, a in diff.reshaped)
             if diff.reshaped else ""]
    first = [*diff.only_base, *diff.only_new, *(name for name, _, _ in diff.reshaped)][0]
    count = len(diff.only_base) + len(diff.only_new) + len(diff.reshaped)
    return Finding("structure", "fail", "weight layers " + "; ".join(p for p in parts if p), first, None,
                   float(count), 0.0)


def _values(base: float, new: float) -> str:
    return f"{base:.4g} → {new:.4g}"


def _parting_first(traces: list[Trace]) -> tuple[list[Trace], str]:
    """The series beyond the tolerance, the one that parts first (then the widest there) first;
    and the message's "; also …" naming the others."""
    beyond = sorted((t for t in traces if t.exceeded), key=lambda t: (t.first_step, -t.first_gap))
    also = f"; also {', '.join(t.name for t in beyond[1:])}" if beyond[1:] else ""
    return beyond, also


def layers(diff: PairDiff, settings: dict[str, object]) -> Finding:
    rtol = float(settings["rtol"])  # type: ignore[arg-type]
    n = len(diff.alignment.steps)
    if not n or not diff.layers:
        what = "no recorded step" if not n else "no weight layer"
        return Finding("layers", "fail", f"{what} in both runs: nothing to compare", None, None, None, rtol)
    beyond, also = _parting_first(diff.layers)
    if not beyond:
        worst = max(diff.layers, key=lambda t: t.gap)
        detail = ("identical" if worst.gap == 0 else
                  f"within a factor {1 + rtol:.6g}; largest factor {math.exp(worst.gap):.6g} "
                  f"({worst.name} at step {worst.step})")
        return Finding("layers", "pass", f"{len(diff.layers)} weight layers at {n} common steps: {detail}")
    first = beyond[0]
    return Finding("layers", "fail", f"{len(beyond)} of {len(diff.layers)} weight layers differ by more than "
                   f"a factor {1 + rtol:.6g}: first {first.name} at step {first.first_step}, ‖g⊙m‖₂ "
                   f"{_values(first.first_base, first.first_new)}{also}", first.name, first.first_step,
                   math.expm1(first.first_gap), rtol)


def measures(diff: PairDiff, settings: dict[str, object]) -> Finding:
    rtol = float(settings["rtol"])  # type: ignore[arg-type]
    if not diff.measures:
        return Finding("measures", "skip", "no step taken in both runs, or no weight layer: no measure to compare")
    over = f"11-point means over {diff.measure_steps} common steps"
    beyond = sorted((t for t in diff.measures if t.exceeded), key=lambda t: -t.gap)
    if not beyond:
        return Finding("measures", "pass",
                       f"{len(diff.measures)} measures within a factor {1 + rtol:.6g} ({over})")
    shown = ", ".join(f"{t.name} {_values(t.base, t.new)}" for t in beyond)
    return Finding("measures", "fail", f"{len(beyond)} of {len(diff.measures)} measures differ by more than "
                   f"a factor {1 + rtol:.6g} ({over}): {shown}", None, None, math.expm1(beyond[0].gap), rtol)


def metrics(diff: PairDiff, settings: dict[str, object]) -> Finding:
    rtol = float(settings["rtol"])  # type: ignore[arg-type]
    one_side = [f"in BASE only: {', '.join(diff.metrics_only_base)}" if diff.metrics_only_base else "",
                f"in NEW only: {', '.join(diff.metrics_only_new)}" if diff.metrics_only_new else ""]
    listed = "; ".join(p for p in one_side if p)
    listed = f" (not compared, {listed})" if listed else ""
    compared = [t for t in diff.metrics if t.compared]
    if not compared:
        return Finding("metrics", "skip", f"no metric logged at a step both runs logged it{listed}")
    beyond, also = _parting_first(compared)
    if not beyond:
        return Finding("metrics", "pass", f"{len(compared)} metrics within {rtol:.3g} at every common step{listed}")
    first = beyond[0]
    return Finding("metrics", "fail", f"{len(beyond)} of {len(compared)} metrics differ by more than {rtol:.3g}: "
                   f"first {first.name} at step {first.first_step}, {_values(first.first_base, first.first_new)}"
                   f"{also}{listed}", None, first.first_step, first.first_gap, rtol)


RULE_CHECKS: dict[str, Callable[[PairDiff, dict[str, object]], Finding]] = {
    "structure": structure, "layers": layers, "measures": measures, "metrics": metrics,
}  # diff_config.RULES without "unmatched", which is about folders, not pairs


def _finding(rule: str, diff: PairDiff, config: Config) -> Finding:
    if not config[rule]["enabled"]:
        return Finding(rule, "skip", "switched off in the configuration")
    return RULE_CHECKS[rule](diff, config[rule])


# -- runs and folders -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pairing:
    """Which runs are compared with which."""

    pairs: list[tuple[str, Path, Path]]  # (run id, BASE file, NEW file)
    only_base: list[tuple[str, Path]]  # (run id, file) of runs in one folder only
    only_new: list[tuple[str, Path]]


def pair_runs(base: Path, new: Path) -> Pairing:
    """Two run files, or two folders of run files matched by run id."""
    for path, side in ((base, "BASE"), (new, "NEW")):
        if not path.exists():
            raise RunFileError(f"{path}: no such file or folder; pass {side} as a run file or a folder of run files")
    if base.is_dir() != new.is_dir():
        folder, file = (base, new) if base.is_dir() else (new, base)
        raise ConfigError(f"{folder} is a folder but {file} is not; give two run files or two folders of runs")
    if not base.is_dir():
        return Pairing([(new.name.removesuffix(".h5"), base, new)], [], [])
    base_ids, new_ids = _run_ids(base), _run_ids(new)
    return Pairing([(i, base_ids[i], new_ids[i]) for i in base_ids if i in new_ids],
                   [(i, p) for i, p in base_ids.items() if i not in new_ids],
                   [(i, p) for i, p in new_ids.items() if i not in base_ids])


def _run_ids(folder: Path) -> dict[str, Path]:
    """Run id -> file: the path below ``folder`` without ``.h5`` (``runs/mlp2-...-seed0``)."""
    return {path.relative_to(folder).as_posix().removesuffix(".h5"): path for path in find_runs(folder)}


@dataclass(frozen=True)
class DiffResult:
    pairs: list[PairDiff]
    only_base: list[tuple[str, Path]]
    only_new: list[tuple[str, Path]]
    unmatched_fail: bool  # runs in one folder only fail the gate (the ``unmatched`` rule)
    unreadable: list[Unreadable]
    series: list[tuple[RunSeries, RunSeries]]  # each pair's layer norms, when the figure was asked for

    @property
    def passed(self) -> bool:
        """The gate's verdict: every file read, some pair compared, and no rule fails."""
        unmatched = bool(self.only_base or self.only_new) and self.unmatched_fail
        return bool(self.pairs) and all(pair.passed for pair in self.pairs) and not unmatched and not self.unreadable

    def figure_pairs(self) -> list[tuple[str, RunSeries, RunSeries]]:
        """(run id, BASE, NEW) layer norms of each pair compared, failing pairs first, for the figure
        (none unless :func:`diff_runs` was asked for it)."""
        if not self.series:
            return []
        ordered = sorted(zip(self.pairs, self.series, strict=True), key=lambda ps: ps[0].passed)
        return [(pair.id, *series) for pair, series in ordered]


def diff_runs(base: Path, new: Path, config: Config, stream_index: int = 0, figure: bool = False) -> DiffResult:
    """Every pair compared; a file that cannot be read is listed, and its pair left out. ``figure``:
    also keep each pair's layer norms for :func:`~gfprobe.render.plots.plot_diff`."""
    pairing = pair_runs(base, new)
    if not pairing.pairs:  # a gate that compared nothing must not pass
        raise ConfigError(f"{base} and {new} have no run id in common ({len(pairing.only_base)} and "
                          f"{len(pairing.only_new)} runs): nothing to compare; pass two folders of the same runs")
    pairs: list[PairDiff] = []
    series: list[tuple[RunSeries, RunSeries]] = []
    unreadable: list[Unreadable] = []
    for run_id, base_path, new_path in pairing.pairs:
        sides, bad = read_each([base_path, new_path], lambda p: read_side(p, stream_index))
        unreadable.extend(bad)
        if not bad:
            pairs.append(compare(sides[0], sides[1], config, run_id))
            if figure:
                series.append((series_of(sides[0]), series_of(sides[1])))
    return DiffResult(pairs, pairing.only_base, pairing.only_new, bool(config[UNMATCHED_RULE]["enabled"]),
                      unreadable, series)


def series_of(side: Side) -> RunSeries:
    """The layer norms of a run as the plots draw them (the steps GradScaler skipped left out), from
    what the comparison read: a file is read once per command."""
    taken = np.flatnonzero(~side.skipped)
    return RunSeries(Path(side.path), side.steps[taken], side.layers, layer_norms(_rows(side.stats, taken), 2), {},
                     {})
