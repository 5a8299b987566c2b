"""The exceptions gfprobe raises for problems a user can act on.

The library raises these; only the CLI turns them into one-line messages and exit codes.
"""

from __future__ import annotations


class GfprobeError(Exception):
    """Base class: a problem with the user's input or environment, with a fix in its message."""


class RunFileError(GfprobeError):
    """A run file is missing, unreadable, truncated, or not a gfprobe run file."""


class ConfigError(GfprobeError):
    """An option or argument has a value gfprobe cannot use."""
