"""Rendering of ``gfprobe report``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.report import RunSummary
from gfprobe.measures import MEASURES
from gfprobe.render.formats import add_number_columns, fmt, sparkline, to_csv, to_json, to_markdown


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


def _table(title: str) -> Table:
    """The report's table style: compact enough for an 80-column terminal, title never wrapped."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True, min_width=len(title))


def run_labels(runs: Sequence[RunSummary]) -> tuple[list[str], str]:
    """Short labels that tell runs apart, and the prefix they share (removed from the labels).

    File names without .h5 when unique, else full paths; a prefix common to all of them and
    ending in a separator is shown once, in the title, so narrow terminals keep what differs.
    """
    names = [Path(run.path).name.removesuffix(".h5") for run in runs]
    if len(set(names)) != len(names):
        names = [run.path for run in runs]
    if len(names) < 2:
        return names, ""
    common = os.path.commonprefix(names)  # noqa: RUF071  characters, not path components, on purpose
    cut = max(common.rfind(sep) for sep in "-_./") + 1
    if any(len(name) == cut for name in names):
        return names, ""
    return [name[cut:] for name in names], common[:cut]


def render_table(console: Console, runs: Sequence[RunSummary], per_layer: bool = False) -> None:
    labels, prefix = run_labels(runs)
    runs_note = f" (runs {prefix}*)" if prefix else ""
    table = _table(f"Gradient flow: mean over 11 evenly spaced recorded steps{runs_note}")
    headers = ("steps", "layers", "gf_1", "gf_2", "egf_1", "egf_2", "egf_1/N", "egf_2/N")
    rows = [[fmt(run.steps) + (f" +{run.skipped} skipped" if run.skipped else ""), fmt(run.layers),
             *(fmt(run.measures[m]) for m in MEASURES)] for run in runs]
    # Numbers are never cut; on a narrow terminal the run names are shortened with an ellipsis.
    table.add_column("run", overflow="ellipsis", min_width=8)
    add_number_columns(table, headers, rows)
    for label, run, cells in zip(labels, runs, rows, strict=True):
        status = "" if run.status == "complete" else f" ({run.status})"
        table.add_row(label + status, *cells)
    console.print(table)
    names = _metric_names(runs)
    trend = _table("egf_2 over training (log scale) and metrics (last / best)")
    rows = [[sparkline(run.series["egf_2"]),
             *(f"{fmt(run.metrics[m]['last'])} / {fmt(run.metrics[m]['best'])}" if m in run.metrics else "–"
               for m in names)] for run in runs]
    trend.add_column("run", overflow="ellipsis", min_width=8)
    add_number_columns(trend, ("egf_2 trend", *names), rows)
    for label, cells in zip(labels, rows, strict=True):
        trend.add_row(label, *cells)
    console.print(trend)
    if per_layer:
        for label, run in zip(labels, runs, strict=True):
            header, rows = _layer_rows(run)
            layer_table = _table(f"{label}: weight layers")
            for i, column in enumerate(header):
                layer_table.add_column(column, justify="left" if i < 2 else "right")
            for row in rows:
                layer_table.add_row(*(fmt(c) for c in row))
            console.print(layer_table)
