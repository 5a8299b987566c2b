"""``gfprobe report RUN...``: per-run summaries, correlation with a metric, SC-SDC statistics."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.analysis.correlation import METHODS
from gfprobe.analysis.scsdc import TESTS
from gfprobe.analysis.sections import Request, Sections, analyse
from gfprobe.analysis.streams import check_selectors, read_streams
from gfprobe.cli._common import console, format_option, handle_errors, listing, progress
from gfprobe.render import streams as render
from gfprobe.store.find import find_runs
from gfprobe.summary import SUMMARIES


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option()
@click.option("--per-layer", is_flag=True, help="Also show each weight layer's gradient norms.")
@click.option("--summary", "how", type=click.Choice(SUMMARIES), default="points", show_default=True,
              help="points: mean at 11 evenly spaced recorded steps (the research's protocol).")
@click.option("--stream", "streams", multiple=True, default=("0",), show_default=True, metavar="STREAM",
              help="Which stream to report: an index (0 = the first optimizer's), a name (e.g. probe) or 'all'. "
                   "Repeatable: each stream is reported on its own, headed by its protocol.")
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
def report(runs: tuple[Path, ...], output_format: str, per_layer: bool, how: str, streams: tuple[str, ...],
           correlate: tuple[str, ...], method: str, by: tuple[str, ...], scsdc: bool, scsdc_metric: str, test: str,
           show_runs: bool | None, resamples: int) -> None:
    """Summarise gradient flow (gf_1, gf_2, egf_1, egf_2, per-weight EGF) and metrics of RUNS;
    correlate the measures with a metric across runs; compare sparse with dense runs.

    RUNS are run files or folders (every *.h5 file below a folder).
    """
    request = Request(runs=show_runs if show_runs is not None else not (correlate or scsdc),
                      correlate=correlate, method=method, by=by, scsdc=scsdc, scsdc_metric=scsdc_metric, test=test,
                      resamples=resamples)
    selectors = check_selectors(streams)
    paths = find_runs(runs)
    with progress(len(paths) * len(selectors)) as on_file:
        blocks, unreadable = read_streams(paths, selectors, how=how, per_layer=per_layer, on_file=on_file)
    with listing(unreadable):
        if not any(block.runs for block in blocks) and output_format != "json":  # JSON: one document, for scripts
            return
        analysed = [(block, analyse(block.runs, request) if block.runs else Sections(runs=[] if request.runs else None))
                    for block in blocks]
        if output_format == "json":
            click.echo(render.render_json(analysed, unreadable))
        elif output_format == "table":
            render.render_table(console(), analysed, request, per_layer)
        else:
            click.echo(render.render_text(analysed, request, output_format, per_layer), nl=False)
