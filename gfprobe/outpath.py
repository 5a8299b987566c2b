"""Checks that an output path can be written, made before any work so a long run never ends in a
traceback over a bad ``--out``.

Writability is tested for real, by creating and removing a file: permission bits say nothing on
read-only mounts, and root ignores them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gfprobe.errors import ConfigError

PathLike = str | os.PathLike[str]


def check_writable(path: PathLike, what: str) -> Path:
    """The resolved path of an output file, after checking that it can be written.

    Args:
        path: The file to write, as the user gave it (it may exist; it is not modified).
        what: The option or argument it came from, for the message, e.g. ``"--out"``.

    Raises:
        ConfigError: The path is empty, a folder or not a regular file, a parent is a file, or
            the file or the folder it goes in cannot be created or written.
    """
    target = _resolved(path, what)
    if os.path.isdir(target):
        raise ConfigError(f"{what} {path}: is a folder; give a file path inside it")
    if os.path.exists(target) and not os.path.isfile(target):
        # A FIFO would block the probe below, and --force would delete a device node.
        raise ConfigError(f"{what} {path}: is not a regular file (a device, FIFO or socket); give a file path")
    _check_folder_can_hold(target.parent, path, what)
    if os.path.exists(target):
        _probe_file(target, path, what)
    return target


def check_writable_folder(path: PathLike, what: str) -> Path:
    """The resolved path of an output folder, after checking that files can be created in it.

    The folder itself is not created here: a refused command leaves nothing behind.

    Raises:
        ConfigError: The path is empty or a file, a parent is a file, or the folder cannot be
            created or written.
    """
    target = _resolved(path, what)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"{what} {path}: is a file, not a folder; give a folder path")
    _check_folder_can_hold(target, path, what)
    return target


def _resolved(path: PathLike, what: str) -> Path:
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"{what}: the path is empty; give a path")
    if "\0" in text:
        raise ConfigError(f"{what} {text!r}: the path contains a NUL character; give a path without it")
    try:
        return Path(text).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise ConfigError(f"{what} {text}: cannot resolve the path ({_reason(exc)}); give another path") from None


def _check_folder_can_hold(folder: Path, shown: PathLike, what: str) -> None:
    """``folder`` exists and takes new files, or its nearest existing ancestor does (so it can be created)."""
    # os.path rather than Path methods: they answer False instead of raising on a folder we may not read.
    existing = folder
    while not os.path.exists(existing):
        if os.path.islink(existing):  # a dangling link: mkdir would fail on it
            raise ConfigError(f"{what} {shown}: {existing} is a broken symbolic link; give another path")
        existing = existing.parent
    if not os.path.isdir(existing):
        raise ConfigError(f"{what} {shown}: {existing} is a file, not a folder; give a path under a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".gfprobe-write-test-", dir=existing)
    except OSError as exc:
        verb = "write in" if existing == folder else f"create {folder} in"
        raise ConfigError(f"{what} {shown}: cannot {verb} {existing} ({_reason(exc)}); "
                          "choose a folder you can write to") from None
    os.close(handle)
    os.unlink(probe)


def _probe_file(target: Path, shown: PathLike, what: str) -> None:
    """An existing file opens for writing; append mode leaves its contents and size alone."""
    try:
        with open(target, "ab"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {shown}: cannot write {target} ({_reason(exc)}); "
                          "choose a path you can write to") from None


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
