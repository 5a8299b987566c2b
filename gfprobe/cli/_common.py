"""Pieces every command shares: error handling, output formats, the console."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from gfprobe.errors import GfprobeError
from gfprobe.render.formats import FORMATS
from gfprobe.render.safe import inline

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2


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
