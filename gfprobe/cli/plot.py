"""``gfprobe plot RUN... --out FILE --kind KIND``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gfprobe.analysis.scsdc import TESTS
from gfprobe.cli._common import UserError, handle_errors, listing, progress, say
from gfprobe.measures import MEASURES
from gfprobe.outpath import check_writable
from gfprobe.render import plots
from gfprobe.store.find import find_runs
from gfprobe.store.reader import Unreadable, read_each


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Image file to write: .png or .svg.")
@click.option("--kind", type=click.Choice(plots.KINDS), default="layers", show_default=True,
              help="layers: per-layer gradient flow over training; measures: the measures over training; "
                   "scatter: a measure against a metric across runs; scsdc: sparse against dense runs; "
                   "diff: RUNS = BASE NEW (two runs or two folders), their layer norms overlaid.")
@click.option("--measure", "measures", multiple=True, type=click.Choice(MEASURES),
              help="Measure(s) for --kind scatter or measures. Repeatable.")
@click.option("--metric", default="test_acc", show_default=True, help="Metric for --kind scatter and scsdc.")
@click.option("--test", type=click.Choice(TESTS), default="welch", show_default=True,
              help="The one-sided test that marks significant pairs in --kind scsdc.")
@handle_errors
def plot(runs: tuple[Path, ...], out: Path, kind: str, measures: tuple[str, ...], metric: str, test: str) -> None:
    """Draw RUNS as a figure good enough for a paper (matplotlib: pip install 'gfprobe[plot]')."""
    plots.check_out(out)
    check_writable(out, "--out")  # before reading: a long read must not end in a failed write
    if kind == "diff":
        _plot_diff(runs, out)
        return
    paths = find_runs(runs)
    with progress(len(paths)) as on_file:
        data, unreadable = _read(kind, paths, on_file)
    with listing(unreadable):
        if data:  # with no readable run there is nothing to draw
            written = _draw(kind, data, out, measures, metric, test)
            say(f"wrote {written}")


def _read(kind: str, paths: list[Path], on_file: Callable[[int], None]) -> tuple[list[Any], list[Unreadable]]:
    """The readable runs (series over training, or summaries), and the files that are not."""
    if kind in ("layers", "measures"):
        from gfprobe.analysis.series import read_series

        return read_each(paths, read_series, on_file)
    from gfprobe.analysis.report import read_report

    return read_report(paths, on_file=on_file)


def _draw(kind: str, data: list[Any], out: Path, measures: tuple[str, ...], metric: str, test: str) -> Path:
    """Draw the figure of ``kind`` from what :func:`_read` returned; the file written."""
    if kind == "layers":
        return plots.plot_layers(data, out)
    if kind == "measures":
        return plots.plot_measures(data, out, measures or ("gf_2", "egf_2", "gf_1", "egf_1"))
    if kind == "scatter":
        return plots.plot_scatter(data, out, metric, measures or ("gf_2", "egf_2"))
    from gfprobe.analysis.scsdc import compare

    return plots.plot_scsdc(compare(data, metric, test), out, metric)


def _plot_diff(runs: tuple[Path, ...], out: Path) -> None:
    """``--kind diff``: BASE and NEW, two runs or two folders matched by run id, read and drawn as
    ``gfprobe diff --plot`` draws them, with the layers tolerance of its configuration."""
    from gfprobe.analysis.diff import diff_runs
    from gfprobe.analysis.diff_config import load_config

    if len(runs) != 2:
        raise UserError(f"--kind diff draws two runs (or two folders) against each other: BASE NEW; got {len(runs)}")
    config, _ = load_config()
    result = diff_runs(runs[0], runs[1], config, figure=True)
    with listing(result.unreadable):
        say(f"wrote {plots.plot_diff(result.figure_pairs(), out, config['layers']['rtol'])}")
