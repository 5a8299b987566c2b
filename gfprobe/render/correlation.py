"""Rendering of the correlation section, laid out like the research's table (SCIENCE.md §3):
measures as rows; sparse, dense and all runs against each metric as columns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gfprobe.analysis.correlation import GROUPS, MIN_INTERVAL_RUNS, Correlation
from gfprobe.render.formats import fmt, to_csv, to_markdown
from gfprobe.render.layout import Build, Column, fit
from gfprobe.render.safe import Markdown, markdown, printable, text

BEST = "*"  # marks the strongest |coefficient| of a column (also bold on a colour terminal)
SYMBOLS = {"kendall": "τ", "spearman": "ρ"}


def _splits(rows: Sequence[Correlation]) -> list[tuple[tuple[tuple[str, Any], ...], list[Correlation]]]:
    out: dict[tuple[tuple[str, Any], ...], list[Correlation]] = {}
    for row in rows:
        out.setdefault(row.split, []).append(row)
    return list(out.items())


def _columns(rows: Sequence[Correlation]) -> list[tuple[str, str]]:
    metrics = list(dict.fromkeys(row.metric for row in rows))
    return [(metric, group) for metric in metrics for group in GROUPS]


def _best(rows: Sequence[Correlation]) -> set[tuple[str, str, str]]:
    """(metric, group, measure) of the strongest finite |coefficient| in each column (all of them
    on a tie: for dense runs egf_1 = gf_1 / L, so the two rank runs identically)."""
    best: set[tuple[str, str, str]] = set()
    for metric, group in _columns(rows):
        cells = [r for r in rows if r.metric == metric and r.group == group and math.isfinite(r.coef)]
        if cells:
            strongest = max(abs(r.coef) for r in cells)
            best.update((metric, group, r.measure) for r in cells if abs(r.coef) >= strongest - 1e-12)
    return best


def _title(rows: Sequence[Correlation], split: tuple[tuple[str, Any], ...]) -> str:
    method = rows[0].method
    where = ", ".join(f"{k} = {fmt(v)}" for k, v in split)
    return (f"{method.capitalize()} {SYMBOLS[method]} of each measure with the metric's last value"
            f"{f' ({where})' if where else ''}")


def render_table(console: Console, rows: Sequence[Correlation]) -> None:
    for split, members in _splits(rows):
        build = _table_of(members, _title(members, split))
        for table in fit(console, build, list(dict.fromkeys(r.metric for r in members))):
            console.print(table)


def _table_of(members: Sequence[Correlation], title: str) -> Build[str]:
    """The table of a chunk of metrics: a row per measure, a column per group and metric."""
    best = _best(members)
    cells = {(r.metric, r.group, r.measure): r for r in members}
    measures = list(dict.fromkeys(r.measure for r in members))

    def build(metrics: Sequence[str], compact: bool, sampled: bool) -> Table:  # every row: a few measures
        table = Table(title=text(title, "table.title"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True, caption=text(_caption(members), "table.caption"),
                      caption_justify="left")
        table.add_column("measure", no_wrap=True)
        columns = []
        for metric in metrics:
            for group in GROUPS:
                n = max((r.n for r in members if r.metric == metric and r.group == group), default=0)
                column = [_cell(cells.get((metric, group, m)), (metric, group, m) in best) for m in measures]
                columns.append(Column(f"{group} vs {printable(metric)}\nn={n}", column))
                columns[-1].add_to(table, compact)
        for i, measure in enumerate(measures):
            table.add_row(text(measure), *(column.cells[i] for column in columns), end_section=True)
        return table

    return build


def _caption(rows: Sequence[Correlation]) -> str:
    notes = [f"{BEST} strongest |{SYMBOLS[rows[0].method]}| in its column", "[95% bootstrap interval]",
             "p two-sided"]
    return "; ".join(filter(None, [*notes, _missing_interval(rows)]))


def _missing_interval(rows: Sequence[Correlation]) -> str:
    """Why a coefficient has no interval ("–" in its place), or "" when every one has one."""
    missing = [r for r in rows if math.isfinite(r.coef) and not math.isfinite(r.ci[0])]
    if any(r.n < MIN_INTERVAL_RUNS for r in missing):
        return f"– no interval: it needs at least {MIN_INTERVAL_RUNS} runs"
    return "– no interval (--resamples 0)" if missing else ""


def _cell(row: Correlation | None, best: bool) -> Text:
    if row is None or not math.isfinite(row.coef):
        return Text("–")
    coef = Text(f"{row.coef:+.3f}{BEST if best else ' '}", style="bold" if best else "")
    return Text.assemble(coef, f"\n{_interval(row)} \np {row.p:.2g} ")


def _interval(row: Correlation) -> str:
    low, high = row.ci
    return f"[{low:+.2f}, {high:+.2f}]" if math.isfinite(low) and math.isfinite(high) else "–"


def _flat(rows: Sequence[Correlation]) -> tuple[list[str], list[list[Any]]]:
    split_keys = list(dict.fromkeys(k for row in rows for k, _ in row.split))
    best = {(split, *key) for split, members in _splits(rows) for key in _best(members)}
    header = [*split_keys, "group", "measure", "metric", "method", "n", "coef", "p", "ci_low", "ci_high", "best"]
    out = []
    for r in rows:
        values = dict(r.split)
        out.append([*(values.get(k) for k in split_keys), r.group, r.measure, r.metric, r.method, r.n, r.coef,
                    r.p, r.ci[0], r.ci[1], (r.split, r.metric, r.group, r.measure) in best])
    return header, out


def render_csv(rows: Sequence[Correlation]) -> str:
    return to_csv(*_flat(rows))


def render_markdown(rows: Sequence[Correlation]) -> str:
    parts = []
    for split, members in _splits(rows):
        best = _best(members)
        cells = {(r.metric, r.group, r.measure): r for r in members}
        columns = _columns(members)
        header = ["measure", *(f"{group} vs {metric}" for metric, group in columns)]
        body = []
        for measure in dict.fromkeys(r.measure for r in members):
            line: list[Any] = [measure]
            for metric, group in columns:
                cell = cells.get((metric, group, measure))
                if cell is None or not math.isfinite(cell.coef):
                    line.append("–")
                    continue
                value = f"{cell.coef:+.3f} {_interval(cell)} p={cell.p:.2g}"
                line.append(Markdown(f"**{value}**" if (metric, group, measure) in best else value))
            body.append(line)
        note = _missing_interval(members)
        parts.append(f"**{markdown(_title(members, split))}** (bold: strongest in its column)\n\n"
                     f"{to_markdown(header, body)}" + (f"\n{note}\n" if note else ""))
    return "\n".join(parts)


def correlation_json(row: Correlation) -> dict[str, Any]:
    """One cell of the table as JSON data (``formats.to_json`` writes NaN as null)."""
    out: dict[str, Any] = {"group": row.group, "measure": row.measure, "metric": row.metric, "method": row.method,
                           "n": row.n, "coef": row.coef, "p": row.p, "ci": list(row.ci)}
    if row.split:
        out["split"] = dict(row.split)
    return out
