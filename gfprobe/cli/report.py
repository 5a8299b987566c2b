"""``gfprobe report RUN...``: per-run summaries, correlation with a metric, SC-SDC statistics."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gfprobe.analysis.correlation import METHODS
from gfprobe.analysis.report import read_report
from gfprobe.analysis.scsdc import TESTS
from gfprobe.analysis.sections import Request, Sections, analyse
from gfprobe.cli._common import EXIT_BAD_INPUT, UserError, console, format_option, handle_errors, say
from gfprobe.render import correlation as render_correlation
from gfprobe.render import report as render_runs
from gfprobe.render import scsdc as render_scsdc
from gfprobe.render.formats import to_json
from gfprobe.store.reader import Unreadable
from gfprobe.summary import SUMMARIES

PROGRESS_AFTER_SECONDS = 1.0


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
    paths = expand_runs(runs)
    with progress(len(paths)) as on_file:
        summaries, unreadable = read_report(paths, stream_index=stream, how=how, per_layer=per_layer,
                                            on_file=on_file)
    with listing(unreadable):
        if summaries:
            _render(analyse(summaries, request), request, output_format, per_layer, unreadable)
        elif output_format == "json":  # still one JSON document on stdout, for scripts
            _render(Sections(runs=[] if request.runs else None), request, output_format, per_layer, unreadable)


@contextmanager
def listing(unreadable: Sequence[Unreadable]) -> Iterator[None]:
    """After the output (or an error), one line per file that could not be read on stderr; then
    exit 2 if there was one. The readable runs are reported all the same."""
    try:
        yield
    finally:
        for item in unreadable:
            say(str(item))
    if unreadable:
        raise SystemExit(EXIT_BAD_INPUT)


def _render(sections: Sections, request: Request, output_format: str, per_layer: bool,
            unreadable: Sequence[Unreadable] = ()) -> None:
    if output_format == "json":
        payload: dict[str, object] = {}
        if sections.runs is not None:
            payload["runs"] = [run.to_json() for run in sections.runs]
        if sections.correlation is not None:
            payload["correlation"] = [c.to_json() for c in sections.correlation]
        if sections.scsdc is not None:
            payload["scsdc"] = [c.to_json() for c in sections.scsdc]
            payload["pivots"] = [{"rows": r, "columns": c, "cells": [vars(cell) for cell in cells]}
                                 for (r, c), cells in sections.pivots.items()]
        if unreadable:
            payload["unreadable"] = [item.to_json() for item in unreadable]
        click.echo(to_json(payload))
        return
    blocks: list[tuple[str, str]] = []  # (section name, text) for csv and markdown
    if output_format == "table":
        out = console()
        if sections.runs is not None:
            render_runs.render_table(out, sections.runs, per_layer)
        if sections.correlation is not None:
            render_correlation.render_table(out, sections.correlation)
        if sections.scsdc is not None:
            render_scsdc.render_table(out, sections.scsdc, sections.pivots, request.scsdc_metric)
        return
    csv = output_format == "csv"
    if sections.runs is not None:
        blocks.append(("runs", render_runs.render_csv(sections.runs) if csv
                       else render_runs.render_markdown(sections.runs, per_layer)))
    if sections.correlation is not None:
        blocks.append(("correlation", render_correlation.render_csv(sections.correlation) if csv
                       else render_correlation.render_markdown(sections.correlation)))
    if sections.scsdc is not None:
        blocks.append(("scsdc", render_scsdc.render_csv(sections.scsdc, sections.pivots) if csv
                       else render_scsdc.render_markdown(sections.scsdc, sections.pivots, request.scsdc_metric)))
    # One section prints as it is; several are told apart by a heading (markdown) or a comment line (csv).
    text = "\n".join(body if len(blocks) == 1 else (f"# {name}\n" if csv else f"## {name}\n\n") + body
                     for name, body in blocks)
    click.echo(text, nl=False)


@contextmanager
def progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr that appears only when reading takes longer than a second, and
    only on a terminal: redirected or captured output never depends on the machine's speed."""
    if not _stderr_is_terminal():
        yield lambda _: None
        return
    started = time.monotonic()
    bar: Progress | None = None
    task = None

    def on_file(index: int) -> None:  # index: files done so far
        nonlocal bar, task
        if bar is None and time.monotonic() - started > PROGRESS_AFTER_SECONDS:
            bar = Progress(TextColumn("reading runs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=console(stderr=True), transient=True)
            bar.start()
            task = bar.add_task("read", total=total)
        if bar is not None and task is not None:
            bar.update(task, completed=index)

    try:
        yield on_file
    finally:
        if bar is not None:
            bar.stop()


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)  # None: no stderr at all (pythonw)
    return bool(isatty and isatty())


def expand_runs(paths: tuple[Path, ...]) -> list[Path]:
    """Folders stand for the run files in them (sorted); files are kept as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.h5"))
            if not found:
                raise UserError(f"{path}: folder holds no .h5 run files; pass a folder of run files or the files")
            out.extend(found)
        else:
            out.append(path)
    return out
