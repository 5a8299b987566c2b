"""``gfprobe watch RUN.h5 | STUDY_DIR``: a live dashboard of a run being recorded, or of a study."""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live

from gfprobe.analysis.check_config import load_config
from gfprobe.analysis.live import DEFAULT_METRIC, StudyState, View, Waiting, Watcher, finished
from gfprobe.cli import _terminal
from gfprobe.cli._common import UserError, config_option, console, handle_errors, say
from gfprobe.errors import RunFileError
from gfprobe.render.safe import printable
from gfprobe.render.watch import screen

KEY_POLL_S = 0.25  # the longest a resize waits to be drawn
READ_FAILURES = 3  # reads in a row that fail before the watch ends (with the last one's message)


@click.command()
@click.argument("target", metavar="RUN.h5 | STUDY_DIR", type=click.Path(path_type=Path))
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between reads (longer by itself while a read takes longer).")
@click.option("--exit-on-finish", is_flag=True,
              help="End once the run file is finalised (any status but running) or its writer is gone "
                   "(killed), showing its last state.")
@click.option("--stream", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which optimizer to show when the run steps several.")
@click.option("--metric", default=DEFAULT_METRIC, show_default=True,
              help="Study folders: the metric that ranks the runs and that SC-SDC compares.")
@config_option
@handle_errors
def watch(target: Path, interval: float, exit_on_finish: bool, stream: int, metric: str,
          config_path: Path | None) -> None:
    """Show a run file while it is recorded, or a study folder while its runs
    train, refreshed every --interval seconds: q (or Ctrl-C) quits.

    A run: each weight layer's gradient norms (raw and masked: trend and last
    value), egf and gf now, the metrics, steps per second, gfprobe's own cost
    and the check rules that fail. A study folder: its runs' statuses, the
    best runs by --metric, the SC-SDC configurations with both sides complete.
    A path that does not exist yet is waited for. When standard output is not
    a terminal, one snapshot is printed (with --exit-on-finish, once the run
    has finished).
    """
    config, _ = load_config(config_path)
    if exit_on_finish and target.is_dir():
        raise UserError(f"--exit-on-finish: {target} is a study folder, whose runs go on starting while it is "
                        "watched; it ends only a run file's watch (quit a study's with q or Ctrl-C)")
    watcher = Watcher(target, stream, config, metric)
    out = console()
    if not out.is_terminal:
        _snapshot(out, watcher, interval, exit_on_finish)
    else:
        _live(out, watcher, interval, exit_on_finish)


def _snapshot(out: Console, watcher: Watcher, interval: float, exit_on_finish: bool) -> None:
    """One screen, every row of it, for a log or a pipe."""
    view = watcher.read()
    if exit_on_finish and not finished(view) and not isinstance(view, StudyState):
        # One line, so that a log does not look hung (a mistyped path is waited for too).
        why = view.reason if isinstance(view, Waiting) else "it is running"
        say(f"waiting for {watcher.target} to finish ({why}); one snapshot follows then")
    while exit_on_finish and not finished(view) and not isinstance(view, StudyState):  # a folder that appeared
        time.sleep(interval)
        view = watcher.read()
    if isinstance(view, Waiting) and not watcher.target.exists():
        raise UserError(f"{watcher.target}: no such file or folder; pass a run file or a study folder "
                        "(--exit-on-finish waits for it to appear)")
    out.print(screen(view, out.width, None, _read_at()))


def _live(out: Console, watcher: Watcher, interval: float, exit_on_finish: bool) -> None:
    """Redraw until q, Ctrl-C or (``exit_on_finish``) the run's end; then leave the last screen
    on the terminal. Every way out restores the terminal first. A file that cannot be read at the
    start is one line, the terminal untouched."""
    resized = _terminal.Resized()
    started = time.monotonic()
    view = watcher.read()
    took = time.monotonic() - started
    with (_terminal.exit_on_signals(signal.SIGTERM, signal.SIGHUP), _terminal.keys(sys.stdin) as keys,
          resized.watching(), Live(console=out, screen=True, auto_refresh=False) as live):
        hint = "q quits" if keys.reading else "Ctrl-C quits"

        def draw(view: View, footer: str) -> None:
            live.update(screen(view, out.width, out.height, footer), refresh=True)

        failed: list[str] = []  # the reads that failed in a row since the last good one
        while True:
            every = f"every {interval:g} s" if took <= interval else f"every {took:.1f} s (reads are slow)"
            footer = f"{hint}  ·  refreshed {every}  ·  {_read_at()}"
            if failed:
                footer = f"{hint}  ·  read {len(failed)} failed, showing the last good one: {printable(failed[-1])}"
            draw(view, footer)
            if exit_on_finish and finished(view):
                break
            if _wait_for_quit(keys, resized, max(interval, took), functools.partial(draw, view, footer)):
                break
            started = time.monotonic()
            view, failed = _read_again(watcher, view, failed)
            took = time.monotonic() - started
        frame = screen(view, out.width, out.height, _read_at())
    out.print(frame)


def _read_again(watcher: Watcher, last: View, failed: list[str]) -> tuple[View, list[str]]:
    """The next view, or the last one while fewer than ``READ_FAILURES`` reads in a row failed: a
    read can meet the file mid-change (``gfprobe record`` stamps the exit code into it as the
    command ends) and the next one then succeeds. A file that stays unreadable ends the watch."""
    try:
        return watcher.read(), []
    except RunFileError as exc:
        if len(failed) + 1 >= READ_FAILURES:
            raise
        return last, [*failed, str(exc)]


def _wait_for_quit(keys: _terminal.Keys, resized: _terminal.Resized, seconds: float,
                   redraw: Callable[[], object]) -> bool:
    """Wait ``seconds`` for q; True when it came. A resized terminal is redrawn meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if "q" in keys.wait(min(left, KEY_POLL_S)).lower():
            return True
        if resized.take():
            redraw()
    return False


def _read_at() -> str:
    return time.strftime("read at %H:%M:%S")
