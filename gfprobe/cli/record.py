"""``gfprobe record -- COMMAND``."""

from __future__ import annotations

import math
from pathlib import Path

import click

from gfprobe import launcher
from gfprobe.analysis.check import check_runs
from gfprobe.analysis.check_config import load_config
from gfprobe.analysis.report import build_report
from gfprobe.cli._common import UserError, config_option, emit, handle_errors, say
from gfprobe.errors import GfprobeError
from gfprobe.outpath import check_writable
from gfprobe.render.report import percent


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--out", type=click.Path(),
              help="Run file to write [default: gfprobe-runs/<date>-<time>-<script>.h5].")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Record every N-th optimizer step.")
@click.option("--masks", type=click.Choice(["auto", "zeros", "none"]), default="auto", show_default=True,
              help="auto: torch prune/parametrize masks; zeros: weights exactly 0 at the first step; none.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME=REGEX",
              help="Record the first capture group of output lines matching REGEX as metric NAME. Repeatable.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
              help="A run attribute stored in the file (VALUE read as JSON if it parses). Repeatable.")
@click.option("--all-ranks", is_flag=True,
              help="Under DDP, every rank records its own run (<out-stem>.rank<r>.h5), not only rank 0: "
                   "for finding ranks that diverge. Sharded runs (FSDP2) always record every rank.")
@click.option("--check", "run_check", is_flag=True,
              help="Check the recorded run's gradient health afterwards (as 'gfprobe check').")
@config_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@handle_errors
def record(out: str | None, force: bool, every: int, masks: str, metrics: tuple[str, ...],
           attrs: tuple[str, ...], all_ranks: bool, run_check: bool, config_path: Path | None,
           command: tuple[str, ...]) -> None:
    """Run COMMAND and record the gradients of every torch optimizer it steps.

    \b
    Example:
      gfprobe record --out run.h5 -- python train.py --epochs 3
    Put -- before COMMAND. No change to the script is needed. Under torchrun with DDP, rank 0
    records; with FSDP2/DTensor every rank records its shard and the files are merged at the end.
    gfprobe exits with COMMAND's exit code; with --check, a failing COMMAND's code wins, then the
    check's (1 when a rule fails).
    """
    config = load_config(config_path)[0] if run_check else None  # a bad config stops us before COMMAND runs
    options = launcher.RecordOptions(
        out=check_writable(out, "--out") if out is not None else None, force=force, every=every, masks=masks,
        metrics=dict(launcher.parse_metric(m) for m in metrics),
        attrs=dict(launcher.parse_attr(a) for a in attrs), all_ranks=all_ranks,
    )
    try:
        result = launcher.run(command, options)
    except launcher.CommandNotFound as exc:
        raise UserError(str(exc), exit_code=127) from None
    if not result.files and not result.notes:
        raise _nothing_recorded(command, result)
    for note in result.notes:
        say(note)
    for path in result.files:
        say(_describe(path))
    if config is None or result.exit_code != 0:
        raise SystemExit(result.exit_code)
    raise SystemExit(emit(check_runs(result.files, config), "table", None))


def _nothing_recorded(command: tuple[str, ...], result: launcher.RecordResult) -> UserError:
    """Why no file came out. When recording failed, the command's own exit code is kept: gfprobe's
    failure never changes the job's result. A command that never trained exits 3 if it succeeded."""
    if result.failures is None:  # the processes had nowhere to say why: recording may have failed
        return UserError(f"nothing was recorded, and why cannot be known (gfprobe had no temporary folder for "
                         f"the command's processes to report in); the command's exit code {result.exit_code} "
                         "is kept", exit_code=result.exit_code)
    if result.failures:
        return UserError(f"nothing was recorded: recording failed ({'; '.join(result.failures)}); "
                         f"the command's exit code {result.exit_code} is kept", exit_code=result.exit_code)
    if result.exit_code != 0:  # it ended (failed, interrupted, killed) before its first optimizer step
        return UserError(f"nothing was recorded: {' '.join(command)} ended with exit code {result.exit_code} "
                         "before stepping a torch optimizer", exit_code=result.exit_code)
    return UserError(f"nothing was recorded: {' '.join(command)} never stepped a torch optimizer "
                     "(or ran in a Python where gfprobe is not installed)", exit_code=3)


def _describe(path: Path) -> str:
    try:
        (run,) = build_report([path])
    except GfprobeError as exc:
        return f"wrote {path} (unreadable: {exc})"
    cost = f"; gfprobe's own time {percent(run.cost)} of the step time" if math.isfinite(run.cost) else ""
    return f"recorded {run.steps} steps of {run.layers} weight layers to {path} ({run.status}){cost}"
