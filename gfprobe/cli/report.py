"""``gfprobe report RUN...``."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.analysis.report import build_report
from gfprobe.cli._common import console, format_option, handle_errors
from gfprobe.render import report as render
from gfprobe.summary import SUMMARIES


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option()
@click.option("--per-layer", is_flag=True, help="Also show each weight layer's gradient norms.")
@click.option("--summary", "how", type=click.Choice(SUMMARIES), default="points", show_default=True,
              help="points: mean at 11 evenly spaced recorded steps (the research's protocol).")
@click.option("--stream", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which optimizer to report when the run stepped several (0 = the first).")
@handle_errors
def report(runs: tuple[Path, ...], output_format: str, per_layer: bool, how: str, stream: int) -> None:
    """Summarise gradient flow (gf_1, gf_2, egf_1, egf_2, per-weight EGF) and metrics of RUNS.

    RUNS are run files; a folder stands for every *.h5 file in it.
    """
    summaries = build_report(expand_runs(runs), stream_index=stream, how=how, per_layer=per_layer)
    if output_format == "json":
        click.echo(render.render_json(summaries))
    elif output_format == "csv":
        click.echo(render.render_csv(summaries), nl=False)
    elif output_format == "markdown":
        click.echo(render.render_markdown(summaries, per_layer), nl=False)
    else:
        render.render_table(console(), summaries, per_layer)


def expand_runs(paths: tuple[Path, ...]) -> list[Path]:
    """Folders stand for the run files in them (sorted); files are kept as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.h5"))
            if not found:
                raise click.UsageError(f"{path}: folder holds no .h5 run files")
            out.extend(found)
        else:
            out.append(path)
    return out
