"""``gfprobe inspect RUN``."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.analysis.inspect import describe
from gfprobe.cli._common import console, format_option, handle_errors
from gfprobe.render import inspect as render


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@format_option(("table", "json"))
@handle_errors
def inspect(run: Path, output_format: str) -> None:
    """Show what a run file holds: metadata, attributes, parameters, steps and metrics."""
    info = describe(run)
    if output_format == "json":
        click.echo(render.render_json(info))
    else:
        render.render_table(console(), info)
