"""Rendering of ``gfprobe report``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.report import RunSummary
from gfprobe.measures import MEASURES
from gfprobe.render.formats import fmt, sparkline, to_csv, to_json, to_markdown


def _metric_names(runs: Sequence[RunSummary]) -> list[str]:
    return sorted({name for run in runs for name in run.metrics})


def _header(runs: Sequence[RunSummary]) -> list[str]:
    metrics = [f"{m}_{k}" for m in _metric_names(runs) for k in ("last", "best")]
    return ["path", "steps", "layers", *MEASURES, *metrics]


def _row(run: RunSummary, metric_names: list[str]) -> list[Any]:
    metric_cells = [run.metrics.get(m, {}).get(k, float("nan")) for m in metric_names for k in ("last", "best")]
    return [run.path, run.steps, run.layers, *(run.measures[m] for m in MEASURES), *metric_cells]


def render_json(runs: Sequence[RunSummary]) -> str:
    return to_json({"runs": [run.to_json() for run in runs]})


def render_csv(runs: Sequence[RunSummary]) -> str:
    names = _metric_names(runs)
    return to_csv(_header(runs), [_row(run, names) for run in runs])


def render_markdown(runs: Sequence[RunSummary], per_layer: bool = False) -> str:
    names = _metric_names(runs)
    text = to_markdown(_header(runs), [_row(run, names) for run in runs])
    if per_layer:
        for run in runs:
            text += f"\n**{run.path}**\n\n" + to_markdown(*_layer_rows(run))
    return text


def _layer_rows(run: RunSummary) -> tuple[list[str], list[list[Any]]]:
    header = ["layer", "shape", "density", "‖g⊙m‖₂", "‖g⊙m‖₁", "max|g|", "non-finite"]
    rows = [[layer.name, "×".join(map(str, layer.shape)), layer.density, layer.l2, layer.l1,
             layer.max_abs, layer.nonfinite] for layer in run.per_layer]
    return header, rows


def run_labels(runs: Sequence[RunSummary]) -> list[str]:
    """File names when they tell runs apart, else full paths."""
    names = [Path(run.path).name for run in runs]
    return names if len(set(names)) == len(names) else [run.path for run in runs]


def render_table(console: Console, runs: Sequence[RunSummary], per_layer: bool = False) -> None:
    labels = run_labels(runs)
    table = Table(title="Gradient flow: mean over 11 evenly spaced recorded steps", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("run", overflow="fold")
    for column in ("steps", "layers", "gf_1", "gf_2", "egf_1", "egf_2", "egf_1/N", "egf_2/N"):
        table.add_column(column, justify="right")
    for label, run in zip(labels, runs, strict=True):
        status = "" if run.status == "complete" else f" ({run.status})"
        steps = fmt(run.steps) + (f" +{run.skipped} skipped" if run.skipped else "")
        table.add_row(label + status, steps, fmt(run.layers), *(fmt(run.measures[m]) for m in MEASURES))
    console.print(table)
    names = _metric_names(runs)
    trend = Table(title="egf_2 over training (log scale) and metrics (last / best)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    trend.add_column("run", overflow="fold")
    trend.add_column("egf_2 trend")
    for m in names:
        trend.add_column(m, justify="right")
    for label, run in zip(labels, runs, strict=True):
        cells = [f"{fmt(run.metrics[m]['last'])} / {fmt(run.metrics[m]['best'])}" if m in run.metrics else "–"
                 for m in names]
        trend.add_row(label, sparkline(run.series["egf_2"]), *cells)
    console.print(trend)
    if per_layer:
        for label, run in zip(labels, runs, strict=True):
            header, rows = _layer_rows(run)
            layer_table = Table(title=f"{label}: weight layers", title_justify="left", box=box.SIMPLE_HEAD)
            for i, column in enumerate(header):
                layer_table.add_column(column, justify="left" if i < 2 else "right")
            for row in rows:
                layer_table.add_row(*(fmt(c) for c in row))
            console.print(layer_table)
