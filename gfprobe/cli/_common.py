"""Pieces every command shares: error handling, output formats, the console."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gfprobe.analysis.check import RunCheck, unreadable_check
from gfprobe.errors import GfprobeError
from gfprobe.render import check as render_check
from gfprobe.render.formats import FORMATS
from gfprobe.render.safe import inline
from gfprobe.store.reader import Unreadable

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1  # gfprobe check: a rule failed
EXIT_BAD_INPUT = 2
PROGRESS_AFTER_SECONDS = 1.0


class UserError(click.ClickException):
    """One line on stderr, a non-zero exit, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class

    def show(self, file: Any = None) -> None:
        say(self.format_message())


def say(message: str) -> None:
    """One ``gfprobe:`` line on stderr. Messages name paths and values read from files: they are
    shown, never obeyed, by the terminal (or a CI log)."""
    click.echo(f"gfprobe: {inline(message)}", err=True)


def handle_errors(func: F) -> F:
    """Turn the library's GfprobeError into a one-line CLI error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GfprobeError as exc:
            raise UserError(str(exc), getattr(exc, "exit_code", EXIT_BAD_INPUT)) from None

    return wrapper  # type: ignore[return-value]


def format_option(choices: tuple[str, ...] = FORMATS) -> Callable[[F], F]:
    return click.option("--format", "output_format", type=click.Choice(choices), default="table",
                        show_default=True, help="Output format.")


def console(stderr: bool = False) -> Console:
    """A console that honours NO_COLOR and GFPROBE_WIDTH (used for stable golden files).

    Markup and emoji codes are off: a string that reaches it from a run file is shown as it is
    (renderers also hand it rich Text, which is never parsed).
    """
    width = os.environ.get("GFPROBE_WIDTH")
    return Console(width=int(width) if width else None, no_color="NO_COLOR" in os.environ,
                   highlight=False, soft_wrap=False, stderr=stderr, markup=False, emoji=False)


# -- RUNS arguments: report, check and plot read them the same way --------------------------------

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


# -- gfprobe check's rules and results: check and record --check share them -----------------------

def config_option(func: F) -> F:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML file with the rules' settings [default: [tool.gfprobe.check] of the nearest "
                             "pyproject.toml].")(func)


def emit(checks: list[RunCheck], output_format: str, junit: Path | None,
         unreadable: Sequence[Unreadable] = ()) -> int:
    """Print the results; write JUnit XML if asked; return the exit code (2 when some file could
    not be read, which outranks a failing rule: that run's health is unknown)."""
    annotated = checks + [unreadable_check(item) for item in unreadable]
    if output_format == "json":
        click.echo(render_check.render_json(checks, unreadable))
    elif output_format == "github":
        if annotated:
            click.echo(render_check.render_github(annotated), nl=False)
    else:
        render_check.render_table(console(), checks)
    if junit is not None:
        render_check.write_junit(annotated, junit)
    if unreadable:
        return EXIT_BAD_INPUT
    return 0 if all(c.passed for c in checks) else EXIT_FAILED


@functools.cache
def plugin_commands(builtin: frozenset[str]) -> dict[str, click.Command]:
    """The commands plugins add (``gfprobe_commands``); one that takes a built-in name is refused."""
    from gfprobe.plugin.manager import call_each

    commands: dict[str, click.Command] = {}
    for plugin, answer in call_each("gfprobe_commands", list):
        for command in answer:
            name = getattr(command, "name", None)
            if not isinstance(command, click.Command) or not name:
                say(f"plugin {plugin!r} offered {type(command).__name__}, not a named click command; left out")
            elif name in builtin or name in commands:
                say(f"plugin {plugin!r} offered a command named {name!r}, which is taken; left out")
            else:
                commands[name] = command
    return commands
