"""Rendering of the SC-SDC section: one row per configuration, then the research's pivot tables
(SCIENCE.md §5) of one-sided p-values with the significant cells marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gfprobe.analysis.scsdc import ALPHA, Cell, Comparison, Side
from gfprobe.render.formats import fmt, order_key, to_csv, to_markdown
from gfprobe.render.layout import HEADER_WORD, Build, Column, fit, header
from gfprobe.render.safe import Markdown, markdown, text
from gfprobe.study import names

MARK = "*"  # p <= ALPHA (also bold on a colour terminal)
TEST_NAMES = {"welch": "Welch's t-test", "mwu": "Mann–Whitney U"}
# Column orders the research uses, where the values are the study engine's names.
ORDERS: dict[str, Sequence[str]] = {"regularisation": names.REGULARISATIONS, "activation": names.ACTIVATIONS,
                                    "optimizer": names.OPTIMIZERS}


# Which of several attributes that tell configurations apart to show, in order of preference.
PREFERRED = ("dataset", "arch", "hidden_layers", "optimizer", "regularisation", "activation", "pair_density", "lr")


def varying_keys(rows: Sequence[Comparison]) -> tuple[list[str], dict[str, Any]]:
    """Config attributes that tell configurations apart, and those common to all.

    An attribute that is a function of one already shown (the study engine's ``active_weights``
    and ``dense_width`` of ``pair_density``; ``lr`` when each optimizer has its own) is left out.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row.config))
    common = {k: rows[0].config.get(k) for k in keys if len({repr(r.config.get(k)) for r in rows}) == 1} if rows \
        else {}
    candidates = sorted((k for k in keys if k not in common),
                        key=lambda k: (PREFERRED.index(k) if k in PREFERRED else len(PREFERRED), k))
    shown: list[str] = []
    for key in candidates:
        if not any(_determined_by(rows, key, other) for other in shown):
            shown.append(key)
    return shown, common


def _determined_by(rows: Sequence[Comparison], key: str, other: str) -> bool:
    seen: dict[str, str] = {}
    for row in rows:
        value, given = repr(row.config.get(key)), repr(row.config.get(other))
        if seen.setdefault(given, value) != value:
            return False
    return True


def _sort_key(row: Comparison, keys: Sequence[str]) -> tuple[Any, ...]:
    """Each shown key's value in :func:`order_key`'s order, in the order of the keys."""
    return tuple(order_key(row.config.get(k)) for k in keys)


def _side(side: Side | None) -> str:
    if side is None:
        return "–"
    std = f"{side.acc_std:.3f}" if math.isfinite(side.acc_std) else "–"
    return f"{side.acc_mean:.3f} ± {std} ({side.n})"


def _diff(diff: float) -> str:
    return f"{diff:+.3f}" if math.isfinite(diff) else "–"


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else f"{p:.3f}{MARK if p <= ALPHA else ' '}"


def _label(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={fmt(config.get(k))}" for k in keys) or "all runs"


def _acc(side: Side | None) -> str:
    if side is None:
        return "–"
    std = f"{side.acc_std:.3f}" if math.isfinite(side.acc_std) else "–"
    return f"{side.acc_mean:.3f}±{std}"


def _egf(side: Side | None) -> str:
    return f"{side.egf_2:.3g}" if side is not None and math.isfinite(side.egf_2) else "–"


def _counts(row: Comparison) -> str:
    return f"{row.sparse.n if row.sparse else 0}/{row.dense.n if row.dense else 0}"


def _heading(console: Console, line: str) -> None:
    # Printed apart from the table: a table's title would wrap to the table's (narrow) width.
    console.print(text(line, "italic"))


def render_table(console: Console, rows: Sequence[Comparison], pivots: Mapping[tuple[str, str], Sequence[Cell]],
                 metric: str) -> None:
    if not rows:
        return
    varying, common = varying_keys(rows)
    test = TEST_NAMES[rows[0].test]
    _heading(console, f"SC-SDC: {metric} of sparse and capacity-matched dense runs; one-sided {test}, "
                      "H1 sparse > dense")
    ordered = sorted(rows, key=lambda r: _sort_key(r, varying))
    usual = max((_counts(r) for r in rows), key=[_counts(r) for r in rows].count)
    notes = [", ".join(filter(None, [r.note, "" if _counts(r) == usual else f"runs {_counts(r)}"])) for r in ordered]
    for table in fit(console, _config_table(ordered, varying, notes), _config_columns(ordered, notes)):
        console.print(table)
    console.print(text(f"{metric}: mean±std over seeds ({usual} sparse/dense runs unless noted); egf_2 s/d: mean "
                       f"egf_2 of each side; {MARK} p ≤ {ALPHA}; common to all: {_label(common, list(common))}",
                       "dim"))
    for (rows_key, columns_key), pivot_cells in pivots.items():
        console.print()
        _heading(console, f"SC-SDC p-values, {rows_key} × {columns_key} ({test}; a cell pools its configurations)")
        for table in _pivot_tables(console, rows_key, columns_key, pivot_cells):
            console.print(table)


def _config_columns(ordered: Sequence[Comparison], notes: Sequence[str]) -> list[Column]:
    cells = [[_acc(r.sparse), _acc(r.dense), _diff(r.diff), _p(r.p), _egf(r.sparse), _egf(r.dense)] for r in ordered]
    names = ("sparse", "dense", "diff", "p", "egf_2 s", "egf_2 d")
    return [*(Column(name, [row[i] for row in cells]) for i, name in enumerate(names)),
            Column("note", notes, "left", wrap=True)]


def _config_table(ordered: Sequence[Comparison], varying: Sequence[str], notes: Sequence[str]) -> Build[Column]:
    """The table of a chunk of the per-configuration columns, configurations as rows."""
    # A configuration is its values alone; the header names them, one per line.
    labels = [" ".join(fmt(r.config.get(k)) for k in varying) or "all runs" for r in ordered]
    names = "\n".join(varying) or "configuration"
    width = max([*map(cell_len, labels), min(max(map(cell_len, names.split("\n"))), HEADER_WORD)])

    # Every column but the notes has a fixed width: the note with the longest word sets the narrowest.
    sample = [max(range(len(notes)), key=lambda i: max(map(cell_len, notes[i].split()), default=0))]

    def build(chunk: Sequence[Column], compact: bool, sampled: bool) -> Table:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column(header(names, width), width=width)  # never shrunk: the note column is
        for column in chunk:
            column.add_to(table, compact)
        for i in sample if sampled else range(len(ordered)):
            significant = math.isfinite(ordered[i].p) and ordered[i].p <= ALPHA
            table.add_row(text(labels[i]), *(text(column.cells[i]) for column in chunk),
                          style="bold" if significant else None)
        return table

    return build


def _ordered(values: set[Any], key: str) -> list[Any]:
    order = ORDERS.get(key, ())
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), str(v)))


def _grid(rows_key: str, columns_key: str, cells: Sequence[Cell]) -> tuple[list[Any], list[Any], dict[Any, Cell]]:
    rows = _ordered({c.row for c in cells}, rows_key)
    columns = _ordered({c.column for c in cells}, columns_key)
    return rows, columns, {(c.row, c.column): c for c in cells}


def _pivot_tables(console: Console, rows_key: str, columns_key: str, cells: Sequence[Cell]) -> list[Table]:
    rows, columns, by_key = _grid(rows_key, columns_key, cells)

    def build(chunk: Sequence[Any], compact: bool, sampled: bool) -> Table:  # every row: a few values
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column(text(rows_key), no_wrap=True)
        pivot = [Column(fmt(column), [_pivot_cell(by_key.get((row, column))) for row in rows]) for column in chunk]
        for column in pivot:
            column.add_to(table, compact)
        for i, row in enumerate(rows):
            table.add_row(text(fmt(row)), *(column.cells[i] for column in pivot))
        return table

    return fit(console, build, columns)


def _pivot_cell(cell: Cell | None) -> Text:
    if cell is None:
        return Text("–")
    significant = math.isfinite(cell.p) and cell.p <= ALPHA
    return Text(_p(cell.p), style="bold" if significant else "")


def _config_rows(rows: Sequence[Comparison]) -> tuple[list[str], list[list[Any]]]:
    keys = list(dict.fromkeys(k for row in rows for k in row.config))
    names = [*keys, *(f"{side}_{field}" for side in ("sparse", "dense") for field in ("n", "acc_mean", "acc_std",
                                                                                       "egf_2")),
             "diff", "p", "test", "note"]
    body = []
    for row in rows:
        sides: list[Any] = []
        for side in (row.sparse, row.dense):
            sides += [side.n, side.acc_mean, side.acc_std, side.egf_2] if side else [None] * 4
        body.append([*(row.config.get(k) for k in keys), *sides, row.diff, row.p, row.test, row.note])
    return names, body


def render_csv(rows: Sequence[Comparison], pivots: Mapping[tuple[str, str], Sequence[Cell]]) -> str:
    blocks = [to_csv(*_config_rows(rows))]
    for (rows_key, columns_key), cells in pivots.items():
        header = [rows_key, columns_key, "configs", "n_sparse", "n_dense", "diff", "p"]
        blocks.append(f"# pivot {rows_key} x {columns_key}\n" + to_csv(
            header, [[c.row, c.column, c.configs, c.n_sparse, c.n_dense, c.diff, c.p] for c in cells]))
    return "\n".join(blocks)


def render_markdown(rows: Sequence[Comparison], pivots: Mapping[tuple[str, str], Sequence[Cell]],
                    metric: str) -> str:
    if not rows:
        return ""
    varying, common = varying_keys(rows)
    test = TEST_NAMES[rows[0].test]
    body = [[_label(r.config, varying), _side(r.sparse), _side(r.dense), r.sparse.egf_2 if r.sparse else None,
             r.dense.egf_2 if r.dense else None, _diff(r.diff), Markdown(_p(r.p)), r.note]
            for r in sorted(rows, key=lambda r: _sort_key(r, varying))]
    out = (f"**SC-SDC: {markdown(metric)}, one-sided {test} (H1 sparse > dense)**; common to all: "
           f"{markdown(_label(common, list(common)))}\n\n"
           + to_markdown(["configuration", "sparse", "dense", "egf_2 sparse", "egf_2 dense", "diff", "p", "note"],
                         body))
    for (rows_key, columns_key), cells in pivots.items():
        row_values, columns, by_key = _grid(rows_key, columns_key, cells)
        grid = [[row, *(_bold_p(by_key.get((row, c))) for c in columns)] for row in row_values]
        out += f"\n**p-values, {markdown(rows_key)} × {markdown(columns_key)}** (bold: p ≤ {ALPHA})\n\n"
        out += to_markdown([rows_key, *map(str, columns)], grid)
    return out


def _bold_p(cell: Cell | None) -> Markdown:
    if cell is None or not math.isfinite(cell.p):
        return Markdown("–")
    return Markdown(f"**{cell.p:.3f}**" if cell.p <= ALPHA else f"{cell.p:.3f}")


def _side_json(side: Side | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {"n": side.n, "acc_mean": side.acc_mean, "acc_std": side.acc_std, "egf_2": side.egf_2}


def comparison_json(row: Comparison) -> dict[str, Any]:
    """One configuration as JSON data (``formats.to_json`` writes NaN as null)."""
    return {"config": row.config, "sparse": _side_json(row.sparse), "dense": _side_json(row.dense),
            "diff": row.diff, "p": row.p, "test": row.test, **({"note": row.note} if row.note else {})}


def pivots_json(pivots: Mapping[tuple[str, str], Sequence[Cell]]) -> list[dict[str, Any]]:
    return [{"rows": rows, "columns": columns, "cells": [vars(cell) for cell in cells]}
            for (rows, columns), cells in pivots.items()]
