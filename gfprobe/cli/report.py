"""``gfprobe report RUN...``: per-run summaries, correlation with a metric, SC-SDC statistics."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.analysis.correlation import METHODS
from gfprobe.analysis.report import read_report
from gfprobe.analysis.scsdc import TESTS
from gfprobe.analysis.sections import Request, Sections, analyse
from gfprobe.cli._common import console, format_option, handle_errors, listing, progress
from gfprobe.render import sections as render
from gfprobe.store.find import find_runs
from gfprobe.summary import SUMMARIES


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option()
@click.option("--per-layer", is_flag=True, help="Also show each weight layer's gradient norms.")
@click.option("--summary", "how", type=click.Choice(SUMMARIES), default="points", show_default=True,
              help="points: mean at 11 evenly spaced recorded steps (the research's protocol).")
@click.option("--stream", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which optimizer to report when the run stepped several (0 = the first).")
@click.option("--correlate", multiple=True, metavar="METRIC",
              help="Rank-correlate every measure with METRIC (e.g. test_acc) across runs. Repeatable.")
@click.option("--method", type=click.Choice(METHODS), default="kendall", show_default=True,
              help="Rank correlation: Kendall's tau-b or Spearman's rho.")
@click.option("--by", multiple=True, metavar="ATTR", help="Split the correlation by a run attribute. Repeatable.")
@click.option("--scsdc", is_flag=True, help="Compare sparse with capacity-matched dense runs (SC-SDC).")
@click.option("--scsdc-metric", default="test_acc", show_default=True, help="The metric SC-SDC compares.")
@click.option("--test", type=click.Choice(TESTS), default="welch", show_default=True,
              help="SC-SDC's one-sided test: Welch's t-test or Mann-Whitney U.")
@click.option("--runs/--no-runs", "show_runs", default=None,
              help="Show the per-run table [default: only when neither --correlate nor --scsdc is given].")
@click.option("--resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the correlation's 95% interval (0: none).")
@handle_errors
def report(runs: tuple[Path, ...], output_format: str, per_layer: bool, how: str, stream: int,
           correlate: tuple[str, ...], method: str, by: tuple[str, ...], scsdc: bool, scsdc_metric: str, test: str,
           show_runs: bool | None, resamples: int) -> None:
    """Summarise gradient flow (gf_1, gf_2, egf_1, egf_2, per-weight EGF) and metrics of RUNS;
    correlate the measures with a metric across runs; compare sparse with dense runs.

    RUNS are run files or folders (every *.h5 file below a folder).
    """
    request = Request(runs=show_runs if show_runs is not None else not (correlate or scsdc),
                      correlate=correlate, method=method, by=by, scsdc=scsdc, scsdc_metric=scsdc_metric, test=test,
                      resamples=resamples)
    paths = find_runs(runs)
    with progress(len(paths)) as on_file:
        summaries, unreadable = read_report(paths, stream_index=stream, how=how, per_layer=per_layer,
                                            on_file=on_file)
    with listing(unreadable):
        if not summaries and output_format != "json":  # JSON: still one document on stdout, for scripts
            return
        sections = analyse(summaries, request) if summaries else Sections(runs=[] if request.runs else None)
        if output_format == "json":
            click.echo(render.render_json(sections, unreadable))
        elif output_format == "table":
            render.render_table(console(), sections, request, per_layer)
        else:
            click.echo(render.render_text(sections, request, output_format, per_layer), nl=False)
