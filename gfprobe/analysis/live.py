"""What ``gfprobe watch`` shows, as plain data read afresh from the store at every refresh: a
run file's state (its weight layers' gradient norms, the measures, metrics, pace, gfprobe's own
cost and the ``check`` rules' findings), a study folder's (its runs' statuses, the best runs, the
SC-SDC configurations with both sides done), or what is awaited. No rich, no torch.

Every read opens the file, reads, and closes it, without HDF5's file lock: a reader never keeps
a handle that a finished writer's last stamp (``gfprobe record``'s exit code) has to wait for,
and a file replaced under its name (a merged run) is read as it is now.
"""

from __future__ import annotations

import calendar
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.analysis import check
from gfprobe.analysis.attrs import group_of
from gfprobe.analysis.check_config import Config
from gfprobe.analysis.cost import ObservationCost, observation_cost
from gfprobe.analysis.index import INDEX_NAME, FileKey, StudyIndex, file_key, options_key
from gfprobe.analysis.layers import weight_layer_stats
from gfprobe.analysis.report import RunSummary, metric_summary, summarise_run
from gfprobe.analysis.scsdc import Comparison, compare
from gfprobe.errors import RunFileError
from gfprobe.measures import compute_all, layer_norms
from gfprobe.store.publish import is_being_written
from gfprobe.store.reader import Metric, StreamData, Unreadable, open_run

RUNNING = "running"  # the status of a file still being written (or left so by a killed writer)
MEASURES = ("egf_1", "egf_2", "gf_1", "gf_2")  # the measures shown, at the last step taken
RATE_WINDOW_S = 10.0  # steps per second are measured over this much of the latest recorded time
DEFAULT_METRIC = "test_acc"


@dataclass(frozen=True)
class LayerTrace:
    """One weight layer over the steps taken (AMP-skipped ones left out, as every measure does)."""

    name: str
    raw_l2: np.ndarray  # ‖g‖₂ per step
    masked_l2: np.ndarray  # ‖g ⊙ m‖₂ per step
    nonfinite: int  # NaN/Inf gradient entries over every recorded step

    @property
    def last_raw(self) -> float:
        return float(self.raw_l2[-1]) if self.raw_l2.size else math.nan

    @property
    def last_masked(self) -> float:
        return float(self.masked_l2[-1]) if self.masked_l2.size else math.nan


@dataclass(frozen=True)
class MetricState:
    name: str
    last: float
    step: int  # the step it was logged at
    count: int


@dataclass(frozen=True)
class RunState:
    """A run file as it is now."""

    path: str
    status: str  # running, complete, failed, interrupted (the file's own word otherwise)
    stream: str  # the stream's name (its optimizer's class)
    streams: int  # streams in the file
    records: int  # recorded steps, AMP-skipped ones included
    skipped: int  # AMP-skipped steps recorded
    last_step: int | None  # the last recorded optimizer step
    layers: list[LayerTrace]
    measures: dict[str, float]  # MEASURES at the last step taken; NaN before any
    egf_2: np.ndarray  # egf_2 per step taken
    metrics: list[MetricState]
    rate: float  # optimizer steps per second lately (RATE_WINDOW_S); NaN with fewer than two records
    cost: ObservationCost | None  # gfprobe's own time; None where not measured
    findings: list[check.Finding]  # every rule's, on the steps recorded so far
    age: float | None  # seconds since the last recorded step was taken (a running file only)
    recorded_at: float | None = None  # when the last recorded step was taken (seconds since the epoch)
    exit_code: int | None = None  # stamped by gfprobe record when its command ended
    error: str | None = None  # why a failed run failed, as the file says
    # Still marked running, but no process holds its write lock: its writer was killed (SIGKILL,
    # the OOM killer) and nothing will ever finish the file.
    writer_gone: bool = False

    @property
    def finished(self) -> bool:
        return self.status != RUNNING or self.writer_gone

    @property
    def alerts(self) -> list[check.Finding]:
        return [f for f in self.findings if f.status == "fail"]


@dataclass(frozen=True)
class Waiting:
    """Nothing to show yet, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class StudyRun:
    name: str  # the run file's path in the folder
    status: str
    steps: int  # steps taken, recorded
    value: float  # the last value of the study's metric; NaN if none yet
    egf_2: float  # the report's summary of egf_2


@dataclass(frozen=True)
class StudyState:
    """A folder of run files (a study) as it is now."""

    path: str
    metric: str
    lower_is_better: bool
    runs: list[StudyRun]  # in file order
    unreadable: list[Unreadable]
    best: list[StudyRun]  # runs with a value of the metric, best first
    pairs: list[Comparison]  # SC-SDC configurations with complete runs on both sides
    configurations: int  # SC-SDC configurations with any complete run
    note: str = ""  # why there are no SC-SDC pairs, where there can be none
    counts: dict[str, int] = field(default_factory=dict)  # status -> runs ("unreadable" too)


View = RunState | StudyState | Waiting


def read_run(path: Path, stream: int, config: Config, now: float | None = None) -> RunState | Waiting:
    """The run file's state, its ``check`` findings under ``config`` included. A file that does not
    exist, or a running one without the stream yet, is awaited; a RunFileError says why any
    other file cannot be read."""
    if not path.exists():
        return Waiting(str(path), "does not exist yet")
    try:
        with open_run(path, locking=False) as run:
            metadata = run.metadata
            status = str(metadata.get("status", "unknown"))
            streams = run.n_streams
            if stream >= streams and status == RUNNING:
                return Waiting(str(path), "running; no optimizer step recorded yet" if stream == 0
                               else f"running; stream {stream} has recorded no step yet (it has {streams})")
            data = run.stream(stream, fields=check.FIELDS)
            metrics = run.metrics()
    except RunFileError:
        if not path.exists():  # removed since (a study retrying a run deletes its old file first)
            return Waiting(str(path), "does not exist (any more)")
        raise
    return _run_state(path, metadata, status, streams, data, metrics, check.check_stream(data, str(path), config),
                      time.time() if now is None else now)


def _run_state(path: Path, metadata: dict[str, Any], status: str, streams: int, data: StreamData,
               metrics: dict[str, Metric], findings: check.RunCheck, now: float) -> RunState:
    stats, cols = weight_layer_stats(data)
    taken = ~data.skipped
    raw, masked = np.sqrt(stats.sumsq.astype(np.float64)), layer_norms(stats, 2)
    nonfinite = data.stats["nonfinite"]
    layers = [LayerTrace(data.params.names[c], raw[:, j], masked[:, j], int(nonfinite[:, c].sum()))
              for j, c in enumerate(cols)]
    series = compute_all(stats)
    measures = {name: float(series[name][-1]) if taken.any() else math.nan for name in MEASURES}
    exit_code = metadata.get("exit_code")
    error = metadata.get("error")
    recorded_at = _recorded_at(metadata, data.times)
    return RunState(
        path=str(path), status=status, stream=data.optimizer, streams=streams, records=int(data.steps.size),
        skipped=int(data.skipped.sum()), last_step=int(data.steps[-1]) if data.steps.size else None,
        layers=layers, measures=measures, egf_2=series["egf_2"],
        metrics=[_metric(m) for m in metrics.values() if m.values.size],
        rate=steps_per_second(data.steps, data.times), cost=observation_cost(data), findings=findings.findings,
        age=_age(recorded_at, now) if status == RUNNING else None, recorded_at=recorded_at,
        exit_code=int(exit_code) if isinstance(exit_code, int | np.integer) else None,
        error=None if error is None else str(error), writer_gone=_writer_gone(path, status),
    )


def _writer_gone(path: Path, status: str) -> bool:
    """A running file whose write lock nobody holds: its writer died without closing it."""
    return status == RUNNING and not is_being_written(path)


def _metric(metric: Metric) -> MetricState:
    return MetricState(metric.name, float(metric.values[-1]), int(metric.steps[-1]), int(metric.values.size))


def steps_per_second(steps: np.ndarray, times: np.ndarray) -> float:
    """Optimizer steps per second over the last ``RATE_WINDOW_S`` of recorded time (at least the
    last two records): the steps the schedule left out count, as the step indices say."""
    if len(steps) < 2:
        return math.nan
    first = min(int(np.searchsorted(times, times[-1] - RATE_WINDOW_S)), len(times) - 2)
    elapsed = float(times[-1] - times[first])
    return float(steps[-1] - steps[first]) / elapsed if elapsed > 0 else math.nan


def _recorded_at(metadata: dict[str, Any], times: np.ndarray) -> float | None:
    """When the last record was taken: its time after the run's start (``start_time``, to the
    second). None where the file does not say when the run started."""
    try:
        start = calendar.timegm(time.strptime(str(metadata["start_time"]), "%Y-%m-%dT%H:%M:%SZ"))
    except (KeyError, ValueError):
        return None
    return start + (float(times[-1]) if len(times) else 0.0)


def _age(recorded_at: float | None, now: float) -> float | None:
    return None if recorded_at is None else max(now - recorded_at, 0.0)


def lower_is_better(metric: str) -> bool:
    """Whether the report takes the smallest value of ``metric`` as its best (a loss, an error)."""
    probe = Metric(metric, np.arange(2), np.zeros(2), np.array([0.0, 1.0]))
    return metric_summary(probe)["best"] == 0.0


class Watcher:
    """What ``gfprobe watch`` reads at each refresh. The target is looked at anew each time: a
    study folder, a run file, or nothing yet (awaited). A run file that has not changed since the
    previous refresh (``index.file_key``) is not read again."""

    def __init__(self, target: Path, stream: int, config: Config, metric: str = DEFAULT_METRIC) -> None:
        self.target = target
        self.stream = stream
        self.config = config
        self.metric = metric
        self._study: StudyReader | None = None
        self._last: tuple[FileKey, RunState] | None = None

    def read(self, now: float | None = None) -> View:
        now = time.time() if now is None else now
        if self.target.is_dir():
            if self._study is None:
                self._study = StudyReader(self.target, self.metric, self.stream)
            return self._study.read()
        key = file_key(self.target)  # before reading: a change while it is read is read next time
        if key is not None and self._last is not None and self._last[0] == key:
            state = self._last[1]
            if state.age is None:
                return state
            # An unchanged file is not read again, but its writer may have died since.
            return dataclasses.replace(state, age=_age(state.recorded_at, now),
                                       writer_gone=_writer_gone(self.target, state.status))
        view = read_run(self.target, self.stream, self.config, now)
        self._last = (key, view) if key is not None and isinstance(view, RunState) else None
        return view


def finished(view: View) -> bool:
    """Whether ``view`` is a run file that is no longer written: any status but running, or a
    writer that is gone."""
    return isinstance(view, RunState) and view.finished


class StudyReader:
    """Reads a folder of run files at each :meth:`read`, again only the files that changed: a file
    is known by its size, times and inode (``index.file_key``), and the folder's study index, read
    but never written, answers for the finished runs it holds."""

    def __init__(self, folder: Path, metric: str = DEFAULT_METRIC, stream: int = 0) -> None:
        self.folder = folder
        self.metric = metric
        self.stream = stream
        self._summaries: dict[Path, tuple[FileKey, RunSummary]] = {}
        self._indexes: dict[Path, tuple[FileKey | None, StudyIndex]] = {}

    def read(self) -> StudyState:
        summaries: list[RunSummary] = []
        unreadable: list[Unreadable] = []
        seen: dict[Path, tuple[FileKey, RunSummary]] = {}
        for path in sorted(self.folder.rglob("*.h5")):
            key = file_key(path)
            if key is None:  # gone since it was listed, or not a regular file
                continue
            try:
                summary = self._summary(path, key)
            except RunFileError as exc:
                if path.exists():
                    unreadable.append(Unreadable(self._name(str(path)), str(exc).removeprefix(f"{path}: ")))
                continue
            seen[path] = (key, summary)
            summaries.append(summary)
        self._summaries = seen
        return self._state(summaries, unreadable)

    def _summary(self, path: Path, key: FileKey) -> RunSummary:
        known = self._summaries.get(path)
        if known is not None and known[0] == key:
            return known[1]
        indexed = self._index(path.parent).get(path, options_key(self.stream), key)
        if indexed is not None:
            return indexed
        with open_run(path, locking=False) as run:
            return summarise_run(run, self.stream)

    def _index(self, folder: Path) -> StudyIndex:
        """The folder's study index, read again only when its file changed."""
        key = file_key(folder / INDEX_NAME)
        known = self._indexes.get(folder)
        if known is None or known[0] != key:
            known = (key, StudyIndex.open(folder))
            self._indexes[folder] = known
        return known[1]

    def _state(self, summaries: list[RunSummary], unreadable: list[Unreadable]) -> StudyState:
        lower = lower_is_better(self.metric)
        runs = [StudyRun(self._name(s.path), s.status, s.steps, s.metrics.get(self.metric, {}).get("last", math.nan),
                         s.measures.get("egf_2", math.nan)) for s in summaries]
        scored = [r for r in runs if math.isfinite(r.value)]
        best = sorted(scored, key=lambda r: (r.value if lower else -r.value, r.name))
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        if unreadable:
            counts["unreadable"] = len(unreadable)
        pairs, configurations, note = self._pairs([s for s in summaries if s.status == "complete"])
        return StudyState(str(self.folder), self.metric, lower, runs, unreadable, best, pairs, configurations, note,
                          counts)

    def _pairs(self, complete: list[RunSummary]) -> tuple[list[Comparison], int, str]:
        paired = [s for s in complete if group_of(s.attrs) is not None]
        if not paired:
            return [], 0, "no complete run with a 'sparse' attribute yet"
        if not any(self.metric in s.metrics for s in paired):
            return [], 0, f"no complete sparse or dense run has {self.metric} yet"
        comparisons = compare(paired, self.metric)
        both = [c for c in comparisons if c.sparse is not None and c.dense is not None and c.sparse.n and c.dense.n]
        return both, len(comparisons), "" if both else "no configuration has both sides complete yet"

    def _name(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.folder))
        except ValueError:
            return path
