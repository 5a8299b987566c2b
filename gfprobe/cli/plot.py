"""``gfprobe plot RUN... --out FILE --kind KIND``."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.cli._common import handle_errors
from gfprobe.cli.report import expand_runs, progress
from gfprobe.measures import MEASURES
from gfprobe.render import plots


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Image file to write: .png or .svg.")
@click.option("--kind", type=click.Choice(plots.KINDS), default="layers", show_default=True,
              help="layers: per-layer gradient flow over training; measures: the measures over training; "
                   "scatter: a measure against a metric across runs; scsdc: sparse against dense runs.")
@click.option("--measure", "measures", multiple=True, type=click.Choice(MEASURES),
              help="Measure(s) for --kind scatter or measures. Repeatable.")
@click.option("--metric", default="test_acc", show_default=True, help="Metric for --kind scatter and scsdc.")
@click.option("--test", type=click.Choice(("welch", "mwu")), default="welch", show_default=True,
              help="The one-sided test that marks significant pairs in --kind scsdc.")
@handle_errors
def plot(runs: tuple[Path, ...], out: Path, kind: str, measures: tuple[str, ...], metric: str, test: str) -> None:
    """Draw RUNS as a figure good enough for a paper (matplotlib: pip install 'gfprobe[plot]')."""
    plots.check_out(out)
    paths = expand_runs(runs)
    if kind in ("layers", "measures"):
        from gfprobe.analysis.series import read_series

        series = []
        with progress(len(paths)) as on_file:
            for index, path in enumerate(paths):
                series.append(read_series(path))
                on_file(index + 1)
        written = (plots.plot_layers(series, out) if kind == "layers"
                   else plots.plot_measures(series, out, measures or ("gf_2", "egf_2", "gf_1", "egf_1")))
    else:
        from gfprobe.analysis.report import build_report

        with progress(len(paths)) as on_file:
            summaries = build_report(paths, on_file=on_file)
        if kind == "scatter":
            written = plots.plot_scatter(summaries, out, metric, measures or ("gf_2", "egf_2"))
        else:
            from gfprobe.analysis.scsdc import compare

            written = plots.plot_scsdc(compare(summaries, metric, test), out, metric)
    click.echo(f"gfprobe: wrote {written}", err=True)
