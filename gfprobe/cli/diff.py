"""``gfprobe diff BASE NEW``: a regression gate between runs (exit 0 same, 1 differs, 2 bad input)."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.analysis.diff import DiffResult, diff_runs
from gfprobe.analysis.diff_config import DESCRIPTIONS, load_config
from gfprobe.cli._common import EXIT_FAILED, console, handle_errors, listing, say
from gfprobe.outpath import check_writable
from gfprobe.render import diff as render
from gfprobe.render import plots

FORMATS = ("table", "json", "markdown", "github")


@click.command(epilog="Rules: " + "; ".join(f"{rule}: {text}" for rule, text in DESCRIPTIONS.items()) + ".")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with the tolerances [default: [tool.gfprobe.diff] of the nearest pyproject.toml].")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="table", show_default=True,
              help="markdown: for a pull-request comment; github: workflow annotations (::error).")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write a JUnit XML report here.")
@click.option("--stream", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which optimizer to compare when the runs stepped several.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw both runs' per-layer gradient norms overlaid here (.png or .svg).")
@handle_errors
def diff(base: Path, new: Path, config_path: Path | None, output_format: str, junit: Path | None, stream: int,
         plot_out: Path | None) -> None:
    """Compare run NEW with run BASE: per-layer gradient norms step by step, the measures and the
    metrics. Exit 0 when they agree within the tolerances, 1 when not, 2 on bad input. BASE and
    NEW are run files, or folders whose runs are matched by run id (path below the folder)."""
    config, _ = load_config(config_path)
    for path, option in ((junit, "--junit"), (plot_out, "--plot")):  # before reading: no wasted work
        if path is not None:
            if option == "--plot":
                plots.check_out(path, option)
            check_writable(path, option)
    result = diff_runs(base, new, config, stream, figure=plot_out is not None)
    with listing(result.unreadable):
        _emit(result, output_format, junit)
        if plot_out is not None:
            say(f"wrote {plots.plot_diff(result.figure_pairs(), plot_out, config['layers']['rtol'])}")
    raise SystemExit(0 if result.passed else EXIT_FAILED)


def _emit(result: DiffResult, output_format: str, junit: Path | None) -> None:
    if output_format == "json":
        click.echo(render.render_json(result))
    elif output_format == "markdown":
        click.echo(render.render_markdown(result), nl=False)
    elif output_format == "github":
        click.echo(render.render_github(result), nl=False)
    else:
        render.render_table(console(), result)
    if junit is not None:
        render.write_junit(result, junit)
