"""Rendering of ``gfprobe report``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.report import LayerSummary, RunSummary
from gfprobe.measures import MEASURES
from gfprobe.render.formats import fmt, sparkline, to_csv, to_markdown
from gfprobe.render.layout import Column, Label, fit
from gfprobe.render.safe import markdown, printable, text
from gfprobe.summary import describe, describe_runs

SHORT = ("gf_1", "gf_2", "egf_1", "egf_2", "egf_1/N", "egf_2/N")  # the measures' table headers


def _metric_names(runs: Sequence[RunSummary]) -> list[str]:
    return sorted({name for run in runs for name in run.metrics})


def _measure_names(runs: Sequence[RunSummary]) -> list[str]:
    """gfprobe's measures, then any a plugin added, in the order the runs have them."""
    return list(dict.fromkeys([*MEASURES, *(name for run in runs for name in run.measures)]))


def _header(runs: Sequence[RunSummary], stream: bool = False) -> list[str]:
    """The columns of a run's row; ``stream``: with the stream's name and protocol (CSV, whose
    rows are read apart from any title)."""
    metrics = [f"{m}_{k}" for m in _metric_names(runs) for k in ("last", "best")]
    return ["path", *(("stream", "protocol") if stream else ()), "steps", "layers", *_measure_names(runs), *metrics,
            "gfprobe_cost"]


def _row(run: RunSummary, measure_names: list[str], metric_names: list[str], stream: bool = False) -> list[Any]:
    metric_cells = [run.metrics.get(m, {}).get(k, float("nan")) for m in metric_names for k in ("last", "best")]
    measure_cells = [run.measures.get(m, float("nan")) for m in measure_names]
    streams = (run.stream_name, run.protocol) if stream else ()
    return [run.path, *streams, run.steps, run.layers, *measure_cells, *metric_cells, run.cost]


def protocols_of(runs: Sequence[RunSummary]) -> str:
    """Which gradient the runs' measures come from: ``minibatch``, ``probe-batch`` (SCIENCE.md §2)."""
    return ", ".join(sorted({run.protocol for run in runs})) or "minibatch"


def run_json(run: RunSummary) -> dict[str, Any]:
    """One run as JSON data (``formats.to_json`` writes NaN as null)."""
    return {
        "path": run.path, "steps": run.steps, "layers": run.layers, "measures": run.measures,
        "metrics": run.metrics, "attrs": run.attrs, "skipped": run.skipped, "status": run.status,
        "gfprobe_cost": run.cost,
        "summary": {"how": run.how, **({"points": run.points} if run.how == "points" else {})},
        "stream": {"index": run.stream, "name": run.stream_name, "protocol": run.protocol, "attrs": run.stream_attrs},
        **({"per_layer": [_layer_json(layer) for layer in run.per_layer]} if run.per_layer else {}),
    }


def _layer_json(layer: LayerSummary) -> dict[str, Any]:
    return {"name": layer.name, "shape": list(layer.shape), "density": layer.density, "l2": layer.l2,
            "l1": layer.l1, "max_abs": layer.max_abs, "nonfinite": layer.nonfinite}


def render_csv(runs: Sequence[RunSummary]) -> str:
    measures, metrics = _measure_names(runs), _metric_names(runs)
    return to_csv(_header(runs, stream=True), [_row(run, measures, metrics, stream=True) for run in runs])


def render_markdown(runs: Sequence[RunSummary], per_layer: bool = False) -> str:
    measures, metrics = _measure_names(runs), _metric_names(runs)
    out = f"**Gradient flow ({markdown(protocols_of(runs))}): {markdown(summary_of(runs))}**\n\n"
    out += to_markdown(_header(runs), [_row(run, measures, metrics) for run in runs])
    if per_layer:
        for run in runs:
            out += f"\n**{markdown(run.path)}**\n\n" + to_markdown(*_layer_rows(run))
    return out


def summary_of(runs: Sequence[RunSummary]) -> str:
    """How the report's runs were summarised, in words: what was used, which for a run with fewer
    recorded steps than the summary's points is every step."""
    return describe_runs((run.how, run.points, run.steps) for run in runs) or describe()


def _layer_rows(run: RunSummary) -> tuple[list[str], list[list[Any]]]:
    header = ["layer", "shape", "density", "‖g⊙m‖₂", "‖g⊙m‖₁", "max|g|", "non-finite"]
    rows = [[layer.name, "×".join(map(str, layer.shape)), layer.density, layer.l2, layer.l1,
             layer.max_abs, layer.nonfinite] for layer in run.per_layer]
    return header, rows


def _table(title: str) -> Table:
    """The report's table style: compact enough for an 80-column terminal, title never wrapped
    when the terminal is wide enough for it."""
    return Table(title=text(title, "table.title"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True, min_width=cell_len(printable(title)))


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
    labels = [label + ("" if run.status == "complete" else f" ({run.status})")
              for label, run in zip(labels, runs, strict=True)]
    runs_note = f" (runs {prefix}*)" if prefix else ""
    _print(console, f"Gradient flow ({protocols_of(runs)}): {summary_of(runs)}{runs_note}", labels,
           _measure_columns(runs))
    costs = any(math.isfinite(run.cost) for run in runs)
    title = ("egf_2 over training (log scale), metrics (last / best) and gfprobe cost" if costs
             else "egf_2 over training (log scale) and metrics (last / best)")
    _print(console, title, labels, _trend_columns(runs, costs))
    if per_layer:
        for label, run in zip(labels, runs, strict=True):
            header, rows = _layer_rows(run)
            columns = [Column(name, [fmt(row[i]) for row in rows], "left" if name == "shape" else "right")
                       for i, name in enumerate(header[1:], 1)]
            _print(console, f"{label}: weight layers", [fmt(row[0]) for row in rows], columns, "layer")


def _measure_columns(runs: Sequence[RunSummary]) -> list[Column]:
    steps = [fmt(run.steps) + (f" +{run.skipped} skipped" if run.skipped else "") for run in runs]
    return [Column("steps", steps), Column("layers", [fmt(run.layers) for run in runs]),
            *(Column(name, [fmt(run.measures[m]) for run in runs]) for m, name in zip(MEASURES, SHORT, strict=True)),
            *(Column(m, [fmt(run.measures.get(m)) for run in runs]) for m in _measure_names(runs)[len(MEASURES):])]


def _trend_columns(runs: Sequence[RunSummary], costs: bool) -> list[Column]:
    """The trend, the metrics, and gfprobe's own time where some run measured it."""
    def last_best(run: RunSummary, metric: str) -> str:
        values = run.metrics.get(metric)
        return f"{fmt(values['last'])} / {fmt(values['best'])}" if values else "–"

    return [Column("egf_2 trend", [sparkline(run.series["egf_2"]) for run in runs]),
            *(Column(m, [last_best(run, m) for run in runs]) for m in _metric_names(runs)),
            *([Column("gfprobe cost", [percent(run.cost) for run in runs])] if costs else [])]


def percent(fraction: float) -> str:
    """gfprobe's own time as a share of step time ("–" where not measured)."""
    return f"{fraction:.1%}" if math.isfinite(fraction) else "–"


def _print(console: Console, title: str, labels: Sequence[str], columns: Sequence[Column],
           label_header: str = "run") -> None:
    """A table of labelled rows; columns that do not fit the terminal go on to further tables."""
    cells = [Label(label) for label in labels]
    # Columns but the labels' have fixed widths: the label that shrinks least sets the narrowest.
    sample = [max(range(len(cells)), key=lambda i: cells[i].measurement.minimum)] if cells else []

    def build(chunk: Sequence[Column], compact: bool, sampled: bool) -> Table:
        table = _table(title if not chunk or chunk[0] is columns[0] else f"{title} (continued)")
        # Numbers are never cut; on a narrow terminal the labels are shortened with an ellipsis.
        table.add_column(label_header, overflow="ellipsis", min_width=8)
        for column in chunk:
            column.add_to(table, compact)
        for i in sample if sampled else range(len(cells)):
            table.add_row(cells[i], *(column.cells[i] for column in chunk))
        return table

    for table in fit(console, build, columns):
        console.print(table)
