"""``gfprobe scsdc``: plan capacity-matched pairs, run SC-SDC studies, list the presets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gfprobe.cli._common import UserError, console, format_option, handle_errors, say
from gfprobe.errors import ConfigError, GfprobeError
from gfprobe.outpath import check_writable_folder
from gfprobe.render import plan as render_plan
from gfprobe.render.safe import printable
from gfprobe.study import names, runner
from gfprobe.study.config import MAX_HIDDEN_LAYERS, MAX_SPARSE_WIDTH, RunSpec, Study, check_density, load_study
from gfprobe.study.executors import EXECUTORS
from gfprobe.study.presets import PRESETS, load_preset


@click.group()
def scsdc() -> None:
    """Same Capacity Sparse vs Dense Comparison: plan pairs, run studies, list presets."""


def _densities(value: str) -> list[float]:
    try:
        densities = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--densities {value!r}: expected numbers separated by commas, e.g. 0.1,0.3,0.5") from None
    if not densities:
        raise ConfigError(f"--densities {value!r}: no density given; give numbers in (0, 1] separated by commas, "
                          "e.g. 0.1,0.3,0.5")
    for density in densities:
        check_density(density, "--densities: density")
    return densities


@scsdc.command()
@click.option("--arch", type=click.Choice(names.ARCHS), default="mlp", show_default=True)
@click.option("--hidden-layers", type=click.IntRange(1, MAX_HIDDEN_LAYERS), default=2, show_default=True,
              help="Hidden layers of the MLP.")
@click.option("--sparse-width", type=click.IntRange(1, MAX_SPARSE_WIDTH), default=512, show_default=True,
              help="Units per hidden layer of the sparse MLP; first-block channels of the sparse CNN.")
@click.option("--densities", default="0.1,0.3,0.5,0.7,0.9", show_default=True,
              help="Comma-separated densities in (0, 1].")
@click.option("--dataset", type=click.Choice(list(names.DATASETS)), default="mnist1d", show_default=True,
              help="Fixes the input and output sizes.")
@format_option(("table", "json"))
@handle_errors
def plan(arch: str, hidden_layers: int, sparse_width: int, densities: str, dataset: str, output_format: str) -> None:
    """Show, per density, the dense width and each layer's sparse mask density that make every
    layer's active-weight count exactly equal between the sparse and the dense network."""
    from gfprobe.study.capacity import plan_pairs

    pairs = plan_pairs(arch, names.DATASETS[dataset], sparse_width, _densities(densities), hidden_layers)
    if output_format == "json":
        click.echo(render_plan.render_json(pairs))
    else:
        render_plan.render_table(console(), pairs)


@scsdc.command()
@format_option(("table", "json"))
def presets(output_format: str) -> None:
    """List the built-in studies with their size (number of runs)."""
    sizes = {name: len(load_preset(name)) for name in PRESETS}
    if output_format == "json":
        click.echo(render_plan.render_presets_json(sizes))
    else:
        render_plan.render_presets_table(console(), sizes)


@scsdc.command()
@click.option("--preset", type=click.Choice(PRESETS), help="A built-in study (see 'gfprobe scsdc presets').")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="A study TOML file.")
@click.option("--out", type=click.Path(file_okay=False), required=True,  # a str: '' must not become '.'
              help="Folder for the study: run files go to OUT/runs/.")
@click.option("--jobs", type=click.IntRange(min=1),
              help="Runs trained at once on this machine [default: 1]; with --executor ray, the most runs handed "
                   "to the cluster at once [default: twice what it can run].")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="Where runs train: worker processes here, or Ray tasks on a local Ray instance or a cluster.")
@click.option("--address", help="The Ray cluster to use, e.g. auto or HOST:6379 (with --executor ray); "
                                "without it, a local Ray instance is started.")
@click.option("--cpus-per-run", type=click.IntRange(min=1),
              help="CPU cores (torch threads) per run [default: local: cores/jobs; ray: 1].")
@click.option("--gpus-per-run", type=float,
              help="Share of a GPU per run with --device cuda, in (0, 1]: 0.5 puts two runs on each GPU [default: 1].")
@click.option("--collect", is_flag=True,
              help="Workers write each run file to their own disk and send it back here (Ray nodes without "
                   "shared storage).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding Fashion-MNIST / CIFAR files in torchvision's layout.")
@click.option("--download", is_flag=True, help="Download missing torchvision data sets (needs a network).")
@click.option("--device", default="cpu", show_default=True, help="Torch device to train on, e.g. cuda.")
@click.option("--report/--no-report", default=True, show_default=True, help="Print the report of the study's runs.")
@handle_errors
def run(preset: str | None, config_path: Path | None, out: str | Path, jobs: int | None, executor: str,
        address: str | None, cpus_per_run: int | None, gpus_per_run: float | None, collect: bool,
        data_root: Path | None, download: bool, device: str, report: bool) -> None:
    """Train every run of a study not yet done under OUT, then report. Rerunning the same
    command skips finished runs and redoes unfinished ones."""
    study = _study(preset, config_path)
    check_writable_folder(out, "--out")
    out = Path(out)
    options = runner.RunOptions(data_root=data_root, download=download, jobs=jobs, device=device, executor=executor,
                                address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                                collect=collect)
    runner.check_study(study, options)
    outcome = _run_with_progress(study, out, options)
    if report and outcome.files:
        _report(outcome.files, out, study)
    click.echo(f"{len(outcome.files)} of {len(study)} runs done ({len(outcome.trained)} trained now); "
               f"run files: {out / runner.RUNS_DIR}/", err=True)
    if outcome.failed:
        for run_id, reason in sorted(outcome.failed.items()):
            say(f"run {run_id} failed: {reason}")
        raise UserError(f"{len(outcome.failed)} runs failed; fix the cause and rerun the same command to redo them",
                        exit_code=1)


def _report(files: list[Path], out: Path, study: Study) -> None:
    """The study's SC-SDC and correlation tables, and its figures next to the runs; with the
    probe-batch protocol, the tables of each protocol, each headed by it."""
    from gfprobe.analysis.report import build_report
    from gfprobe.analysis.sections import STUDY, analyse
    from gfprobe.analysis.streams import read_streams
    from gfprobe.errors import RunFileError
    from gfprobe.render import plots
    from gfprobe.render.sections import render_study

    if any(spec.probe_every for spec in study.runs):
        blocks, unreadable = read_streams(files, ["0", "probe"])
        if unreadable:
            raise RunFileError(str(unreadable[0]))
        for block in blocks:
            console().print(printable(block.label), markup=False, highlight=False)
            render_study(console(), analyse(block.runs, STUDY))
            console().print()
        summaries = blocks[0].runs
        sections = analyse(summaries, STUDY)  # the figures are the minibatch protocol's
    else:
        summaries = build_report(files)
        sections = analyse(summaries, STUDY)
        render_study(console(), sections)
    try:
        figures = [plots.plot_scsdc(sections.scsdc or [], out / "plots" / "scsdc.png"),
                   plots.plot_scatter(summaries, out / "plots" / "scatter.png")]
    except GfprobeError as exc:  # matplotlib is optional: the tables stand without the figures
        say(f"no figures ({exc})")
        return
    click.echo(f"figures: {', '.join(str(f) for f in figures)}; more with 'gfprobe plot {out / runner.RUNS_DIR}'",
               err=True)


def _study(preset: str | None, config_path: Path | None) -> Study:
    if preset is not None and config_path is None:
        return load_preset(preset)
    if config_path is not None and preset is None:
        return load_study(config_path)
    raise click.UsageError("give exactly one of --preset NAME or --config FILE")


def _run_with_progress(study: Study, out: Path, options: runner.RunOptions) -> runner.StudyOutcome:
    reporter = _bar if console().is_terminal else _log_lines
    with reporter(study) as (started, finished):
        try:
            return runner.run_study(study, out, options, started, finished)
        except KeyboardInterrupt:
            raise UserError(f"interrupted; rerun the same command to finish the study in {out}",
                            exit_code=130) from None


Callbacks = tuple[runner.OnStart, runner.OnRun]


@contextmanager
def _log_lines(study: Study) -> Iterator[Callbacks]:
    """Plain lines on stderr: a CI log gets progress as it goes, not one bar at the end."""
    with runner.LogProgress(len(study), lambda line: click.echo(line, err=True), runner.LOG_EVERY_SECONDS) as log:
        yield log.on_start, log.on_run


@contextmanager
def _bar(study: Study) -> Iterator[Callbacks]:
    # The description holds the study's name, which is data: shown as text (markup=False), never
    # parsed as rich markup ("[/]" would raise, "[link=...]" would make a link), and printable.
    columns = (TextColumn("{task.description}", style="progress.description", markup=False), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    name = printable(study.name)
    with Progress(*columns, console=console(), transient=False) as bar:
        task = bar.add_task(f"{name}: planning", total=len(study))
        failures = 0

        def started(done: int, todo: int) -> None:
            bar.update(task, completed=done, description=f"{name}: training")

        def finished(spec: RunSpec, error: str | None) -> None:
            nonlocal failures
            failures += error is not None
            bar.update(task, advance=1, description=f"{name}: training" + (f", {failures} failed" if failures else ""))

        yield started, finished
