"""Rendering of the correlation section, laid out like the research's table (SCIENCE.md §3):
measures as rows; sparse, dense and all runs against each metric as columns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.correlation import GROUPS, Correlation
from gfprobe.render.formats import fmt, to_csv, to_markdown

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
        best = _best(members)
        measures = list(dict.fromkeys(r.measure for r in members))
        title = _title(members, split)
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True, caption=f"{BEST} strongest |{SYMBOLS[members[0].method]}| in its "
                      "column; [95% bootstrap interval]; p two-sided", caption_justify="left")
        table.add_column("measure", no_wrap=True)
        cells = {(r.metric, r.group, r.measure): r for r in members}
        for metric, group in _columns(members):
            n = max((r.n for r in members if r.metric == metric and r.group == group), default=0)
            table.add_column(f"{group} vs {metric}\nn={n}", justify="right", no_wrap=True)
        for measure in measures:
            row = []
            for metric, group in _columns(members):
                cell = cells.get((metric, group, measure))
                row.append(_cell(cell, (metric, group, measure) in best) if cell else "–")
            table.add_row(measure, *row, end_section=True)
        console.print(table)


def _cell(row: Correlation, best: bool) -> str:
    if not math.isfinite(row.coef):
        return "–"
    coef = f"{row.coef:+.3f}{BEST if best else ' '}"
    coef = f"[bold]{coef}[/bold]" if best else coef
    return f"{coef}\n[{row.ci[0]:+.2f}, {row.ci[1]:+.2f}] \np {row.p:.2g} "


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
                text = f"{cell.coef:+.3f} [{cell.ci[0]:+.2f}, {cell.ci[1]:+.2f}] p={cell.p:.2g}"
                line.append(f"**{text}**" if (metric, group, measure) in best else text)
            body.append(line)
        parts.append(f"**{_title(members, split)}** (bold: strongest in its column)\n\n{to_markdown(header, body)}")
    return "\n".join(parts)
