"""The per-run report: measures summarised by protocol, metrics' last and best values."""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.analysis import trend
from gfprobe.analysis.cost import observation_cost
from gfprobe.analysis.layers import MEASURE_FIELDS, PER_LAYER_FIELDS, weight_layer_stats
from gfprobe.analysis.measure_set import compute_series
from gfprobe.errors import RunFileError
from gfprobe.measures import LayerStats, layer_norms
from gfprobe.store.reader import Metric, RunFile, StreamData, Unreadable, open_run, read_each
from gfprobe.store.schema import MINIBATCH
from gfprobe.summary import DEFAULT_POINTS, summarise

# Metrics where lower is better; every other metric is taken as higher-is-better.
_LOWER_IS_BETTER = ("loss", "error", "err", "perplexity", "ppl", "mse", "mae")


@dataclass(frozen=True)
class LayerSummary:
    name: str
    shape: tuple[int, ...]
    density: float  # active / numel, averaged over steps
    l2: float  # ‖g ⊙ m‖_2 summarised by the protocol
    l1: float
    max_abs: float  # largest |g| seen at any step
    nonfinite: int  # non-finite gradient entries over all steps


@dataclass(frozen=True)
class RunSummary:
    path: str
    status: str
    steps: int  # recorded optimizer steps (AMP-skipped ones excluded)
    skipped: int  # AMP-skipped steps recorded
    layers: int  # weight layers
    measures: dict[str, float]
    metrics: dict[str, dict[str, float]]
    attrs: dict[str, Any]
    # egf_2: every step from summarise_run; read_report keeps only the 16-point trend the sparkline draws
    series: dict[str, np.ndarray] = field(repr=False)
    per_layer: list[LayerSummary] = field(default_factory=list)
    how: str = "points"  # the summary of each per-step series (gfprobe.summary.SUMMARIES)
    points: int = DEFAULT_POINTS  # steps the "points" summary averages
    stream: int = 0  # the stream of the file summarised (its index)
    stream_name: str = ""  # the optimizer's class, or a measurement stream's name ("probe")
    protocol: str = MINIBATCH  # how the stream's gradient was taken (docs/run-file.md, "Streams")
    stream_attrs: dict[str, Any] = field(default_factory=dict)  # the stream's own attributes
    n_streams: int = 1  # streams in the file
    cost: float = math.nan  # gfprobe's own time as a fraction of step time (analysis.cost); NaN: not measured


def metric_summary(metric: Metric) -> dict[str, float]:
    values = metric.values
    if values.size == 0:
        return {"last": float("nan"), "best": float("nan")}
    lower = any(word in metric.name.lower() for word in _LOWER_IS_BETTER)
    finite = values[np.isfinite(values)]
    best = (finite.min() if lower else finite.max()) if finite.size else float("nan")
    return {"last": float(values[-1]), "best": float(best)}


def summarise_run(run: RunFile, stream_index: int | str = 0, how: str = "points",
                  points: int = DEFAULT_POINTS, per_layer: bool = False) -> RunSummary:
    stream = run.stream(stream_index, fields=PER_LAYER_FIELDS if per_layer else MEASURE_FIELDS)
    stats, cols = weight_layer_stats(stream)
    series = compute_series(stats)
    layers = _per_layer(stream, stats, cols, how, points) if per_layer else []
    return RunSummary(
        path=str(run.path),
        status=str(run.metadata.get("status", "unknown")),
        steps=int((~stream.skipped).sum()),
        skipped=int(stream.skipped.sum()),
        layers=stats.n_layers,
        measures={name: summarise(values, how, points) for name, values in series.items()},
        metrics={name: metric_summary(m) for name, m in sorted(run.metrics().items())},
        attrs=run.attrs,
        series={"egf_2": series["egf_2"].astype(np.float32)},
        per_layer=layers,
        how=how,
        points=points,
        stream=stream.index,
        stream_name=stream.optimizer,
        protocol=stream.protocol,
        stream_attrs=stream.attrs,
        n_streams=run.n_streams,
        cost=_cost_fraction(stream),
    )


def _cost_fraction(stream: StreamData) -> float:
    cost = observation_cost(stream)
    return math.nan if cost is None else cost.fraction


def _per_layer(stream: StreamData, stats: LayerStats, cols: list[int], how: str,
               points: int) -> list[LayerSummary]:
    l2, l1 = layer_norms(stats, 2), layer_norms(stats, 1)
    out = []
    for j, col in enumerate(cols):
        numel = max(int(stream.params.numel[col]), 1)
        active = stats.active[:, j]
        out.append(LayerSummary(
            name=stream.params.names[col],
            shape=stream.params.shapes[col],
            density=float(active.mean() / numel) if active.size else float("nan"),
            l2=summarise(l2[:, j], how, points),
            l1=summarise(l1[:, j], how, points),
            max_abs=float(np.max(stream.stats["max_abs"][:, col])) if stream.steps.size else float("nan"),
            nonfinite=int(stream.stats["nonfinite"][:, col].sum()),
        ))
    return out


PARALLEL_FROM = 64  # files: below this, worker processes cost more than they save
CHUNK = 16  # files per task handed to a worker process


def build_report(paths: Sequence[str | Path], stream_index: int | str = 0, how: str = "points",
                 points: int = DEFAULT_POINTS, per_layer: bool = False,
                 on_file: Callable[[int], None] | None = None) -> list[RunSummary]:
    """Summaries of every run, in the order given; a RunFileError for the first file that cannot
    be read (:func:`read_report` reports the others and lists every such file)."""
    summaries, unreadable = read_report(paths, stream_index, how, points, per_layer, on_file)
    if unreadable:
        raise RunFileError(str(unreadable[0]))
    return summaries


def read_report(paths: Sequence[str | Path], stream_index: int | str = 0, how: str = "points",
                points: int = DEFAULT_POINTS, per_layer: bool = False,
                on_file: Callable[[int], None] | None = None) -> tuple[list[RunSummary], list[Unreadable]]:
    """Summaries of every readable run, and every file that could not be read, in the order given.
    Each file is opened once, and only the statistics the summaries need are read. ``on_file(n)``
    is called as files are done (n so far).

    A run whose folder's study index (``index.py``) holds its summary, for the file as it is now
    and these options, is not read at all; the others are read, and the indexes brought up to
    date. Either way ``series["egf_2"]`` is the trend the report draws (``trend.compress``).
    Per-layer summaries are not indexed: with ``per_layer`` every file is read.
    """
    if per_layer:
        return _read_files(paths, stream_index, how, points, per_layer, on_file)
    from gfprobe.analysis import index  # it imports this module

    def read(files: list[Path], done: Callable[[int], None] | None) -> tuple[list[RunSummary], list[Unreadable]]:
        return _read_files(files, stream_index, how, points, False, done)

    return index.read_indexed(paths, index.options_key(stream_index, how, points), read, on_file)


def _read_files(paths: Sequence[str | Path], stream_index: int | str, how: str, points: int, per_layer: bool,
                on_file: Callable[[int], None] | None) -> tuple[list[RunSummary], list[Unreadable]]:
    """Summaries read from the files. Reading is decompression-bound, and HDF5 serialises
    threads, so many files are read by worker processes (one per core); the summaries come back
    small."""
    read = functools.partial(_summarise_paths, stream_index=stream_index, how=how, points=points,
                             per_layer=per_layer)
    workers = min(os.cpu_count() or 1, 8)
    chunks = [list(paths[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    if len(paths) < PARALLEL_FROM or workers < 2:
        results = []
        for chunk in chunks:
            results.append(read(chunk))
            if on_file is not None:
                on_file(sum(len(runs) + len(bad) for runs, bad in results))
        return _joined(results)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(read, chunk): len(chunk) for chunk in chunks}
        done = 0
        for future in as_completed(futures):
            done += futures[future]
            if on_file is not None:
                on_file(done)
        return _joined([future.result() for future in futures])


def summarise_path(path: str | Path, stream_index: int | str = 0, how: str = "points",
                   points: int = DEFAULT_POINTS, per_layer: bool = False) -> RunSummary:
    """The report's summary of one run file: :func:`summarise_run` with its ``egf_2`` series cut
    to the trend the report draws (the rest of it is never shown, and at many thousand steps a
    run it would be most of what a large report holds). A RunFileError says why it cannot be read."""
    with open_run(path) as run:
        summary = summarise_run(run, stream_index, how, points, per_layer)
    return dataclasses.replace(summary, series=trend.compressed(summary.series))


def _summarise_paths(paths: Sequence[str | Path], stream_index: int | str, how: str, points: int,
                     per_layer: bool) -> tuple[list[RunSummary], list[Unreadable]]:
    def summary(path: Path) -> RunSummary:
        return summarise_path(path, stream_index, how, points, per_layer)

    return read_each([Path(p) for p in paths], summary)


def _joined(results: list[tuple[list[RunSummary], list[Unreadable]]]) -> tuple[list[RunSummary], list[Unreadable]]:
    return [s for runs, _ in results for s in runs], [u for _, bad in results for u in bad]
