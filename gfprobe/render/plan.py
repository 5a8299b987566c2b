"""Rendering of ``gfprobe scsdc plan`` (capacity-matched pairs) and ``gfprobe scsdc presets``, as a
table or JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.render.formats import to_json
from gfprobe.render.safe import text
from gfprobe.study.capacity import PairPlan
from gfprobe.study.presets import describe


def render_json(pairs: Sequence[PairPlan]) -> str:
    return to_json({"pairs": [pair.to_json() for pair in pairs]})


def _shape(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def render_table(console: Console, pairs: Sequence[PairPlan]) -> None:
    for pair in pairs:
        title = (f"density {pair.density:g}: sparse width {pair.sparse_width} "
                 f"against dense width {pair.dense_width}")
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True, min_width=len(title))
        for column in ("layer", "sparse shape", "dense shape", "active (both)", "sparse density"):
            table.add_column(column, justify="left" if column in ("layer",) else "right", no_wrap=True)
        for layer in pair.layers:
            table.add_row(text(layer.name), _shape(layer.sparse_shape), _shape(layer.dense_shape),
                          f"{layer.dense_active:,}", f"{layer.sparse_density:.4f}")
        density = pair.sparse_active_total / pair.sparse_numel_total
        table.add_row("total", f"{pair.sparse_numel_total:,}", "", f"{pair.dense_active_total:,}",
                      f"{density:.4f}", style="bold")
        console.print(table)


def render_presets_json(sizes: Mapping[str, int]) -> str:
    """The presets (name -> number of runs) with their full descriptions."""
    return to_json({"presets": [{"name": name, "runs": runs, "description": describe(name, full=True)}
                                for name, runs in sizes.items()]})


def render_presets_table(console: Console, sizes: Mapping[str, int]) -> None:
    table = Table(title="SC-SDC presets: gfprobe scsdc run --preset NAME --out DIR", title_justify="left")
    for column in ("preset", "runs", "what it is"):
        table.add_column(column, justify="right" if column == "runs" else "left")
    for name, runs in sizes.items():
        table.add_row(name, f"{runs:,}", describe(name))
    console.print(table)
