"""The exceptions gfprobe raises for problems a user can act on, and the helpers their messages share.

The library raises these; only the CLI turns them into one-line messages and exit codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class GfprobeError(Exception):
    """Base class: a problem with the user's input or environment, with a fix in its message."""


class RunFileError(GfprobeError):
    """A run file is missing, unreadable, truncated, or not a gfprobe run file."""


class ConfigError(GfprobeError):
    """An option or argument has a value gfprobe cannot use."""


# What code gfprobe calls but did not write (a plugin's hook, a callback on a framework's import)
# may raise without it reaching the training: anything but a Ctrl-C, sys.exit() included.
FOREIGN_ERRORS = (Exception, SystemExit)


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``allowed`` to a misspelt ``word``; "" if none is close."""
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def short(value: Any) -> str:
    """A value for a one-line message: long strings and tables cut."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
