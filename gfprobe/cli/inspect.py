"""``gfprobe inspect RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from gfprobe.cli._common import console, format_option, handle_errors
from gfprobe.render.formats import fmt, to_json
from gfprobe.render.safe import text
from gfprobe.store.reader import open_run


def describe(path: Path) -> dict[str, Any]:
    """Everything a run file holds, as plain data."""
    with open_run(path, shards_ok=True) as run:
        streams = []
        for index, optimizer in enumerate(run.stream_names()):
            data = run.stream(index, fields=("has_grad",))
            params = data.params
            streams.append({
                "index": index, "optimizer": optimizer, "records": int(data.steps.size),
                "skipped": int(data.skipped.sum()),
                "params": [{"name": n, "shape": list(s), "numel": int(k), "kind": kind, "module_type": mt,
                            "mask_source": ms}
                           for n, s, k, kind, mt, ms in zip(params.names, params.shapes, params.numel,
                                                             params.kinds, params.module_types,
                                                             params.mask_sources, strict=True)],
            })
        metrics = {name: {"count": int(m.values.size), "last": float(m.values[-1]) if m.values.size else None}
                   for name, m in run.metrics().items()}
        return {"path": str(path), "metadata": run.metadata, "attrs": run.attrs,
                "streams": streams, "metrics": metrics}


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@format_option(("table", "json"))
@handle_errors
def inspect(run: Path, output_format: str) -> None:
    """Show what a run file holds: metadata, attributes, parameters, steps and metrics."""
    info = describe(run)
    if output_format == "json":
        click.echo(to_json(info))
        return
    out = console()
    # Everything below is read from the file: Text cells, so none of it is parsed as markup.
    meta = Table(title=text(run, "table.title"), title_justify="left", show_header=False)
    for key, value in {**info["metadata"], **{f"attrs.{k}": v for k, v in info["attrs"].items()}}.items():
        meta.add_row(text(key), text(fmt_value(value)))
    out.print(meta)
    for stream in info["streams"]:
        table = Table(title=text(f"stream {stream['index']}: {stream['optimizer']}, {stream['records']} recorded "
                                 f"steps ({stream['skipped']} AMP-skipped)", "table.title"), title_justify="left")
        for column in ("parameter", "shape", "numel", "kind", "module", "mask"):
            table.add_column(column, justify="right" if column == "numel" else "left")
        for p in stream["params"]:
            table.add_row(*map(text, (p["name"], "×".join(map(str, p["shape"])), p["numel"], p["kind"],
                                      p["module_type"], p["mask_source"])))
        out.print(table)
    if info["metrics"]:
        table = Table(title=text("metrics", "table.title"), title_justify="left")
        for column in ("metric", "values", "last"):
            table.add_column(column)
        for name, m in info["metrics"].items():
            table.add_row(text(name), text(m["count"]), text(fmt(m["last"])))
        out.print(table)


def fmt_value(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else fmt(value)
