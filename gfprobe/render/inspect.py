"""Rendering of ``gfprobe inspect``: a run file's contents as tables or JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from gfprobe.analysis.cost import in_words
from gfprobe.render.formats import fmt, to_json
from gfprobe.render.safe import text
from gfprobe.store.schema import MINIBATCH


def render_json(info: dict[str, Any]) -> str:
    return to_json(info)


def render_table(console: Console, info: dict[str, Any]) -> None:
    """Metadata and attributes, one table per stream's parameters, and the metrics. Everything is
    read from the file: Text cells, so none of it is parsed as markup."""
    meta = Table(title=text(info["path"], "table.title"), title_justify="left", show_header=False)
    for key, value in {**info["metadata"], **{f"attrs.{k}": v for k, v in info["attrs"].items()}}.items():
        meta.add_row(text(key), text(fmt_value(value)))
    console.print(meta)
    for stream in info["streams"]:
        console.print(_stream_table(stream))
    if info["metrics"]:
        table = Table(title=text("metrics", "table.title"), title_justify="left")
        for column in ("metric", "values", "last"):
            table.add_column(column)
        for name, m in info["metrics"].items():
            table.add_row(text(name), text(m["count"]), text(fmt(m["last"])))
        console.print(table)


def _stream_table(stream: dict[str, Any]) -> Table:
    # An optimizer's minibatch gradient is what a stream is unless it says otherwise: only others are named.
    protocol = "" if stream["protocol"] == MINIBATCH else f" ({stream['protocol']})"
    table = Table(title=text(f"stream {stream['index']}: {stream['optimizer']}{protocol}, {stream['records']} recorded "
                             f"steps ({stream['skipped']} AMP-skipped)", "table.title"), title_justify="left")
    for column in ("parameter", "shape", "numel", "kind", "module", "mask"):
        table.add_column(column, justify="right" if column == "numel" else "left")
    for p in stream["params"]:
        table.add_row(*map(text, (p["name"], "×".join(map(str, p["shape"])), p["numel"], p["kind"],
                                  p["module_type"], p["mask_source"])))
    table.caption, table.caption_justify = text(f"gfprobe's own time: {describe_cost(stream['cost'])}"), "left"
    return table


def describe_cost(cost: dict[str, Any] | None) -> str:
    """gfprobe's observation cost (``analysis.cost.cost_json``) in words."""
    if cost is None:
        return "not measured (the file predates it, or its recorder does not measure it)"
    return in_words(cost["fraction"], cost["hook_s"], cost["writer_s"], cost["interval_s"])


def fmt_value(value: Any) -> str:
    """An attribute or metadata value: a list of strings (a command line) as words."""
    return " ".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else fmt(value)
