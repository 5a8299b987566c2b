"""How a run file comes into being and who may replace it.

A run file is built under a hidden temporary name in its own folder and takes its real name
only once its header and layout are on disk and SWMR writing has started: a process killed at
any moment leaves either no run file or one that reads back. The real name is taken with a hard
link, which never replaces an existing file (two processes cannot end up sharing one).

While a run is being written, its process holds a lock on a byte range of the file far past its
end, so ``gfprobe record --force`` can tell a file being written from a finished one. It is a
POSIX record lock: HDF5 locks whole files with ``flock``, which does not interact with it (on
Linux), so readers of a live file are never blocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from pathlib import Path

_LOCK_START = 1 << 62  # a byte no run file reaches: the lock never covers real data
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temp_path(path: Path) -> Path:
    """``<folder>/.<name>.<pid>.tmp``: hidden, never matched by ``*.h5``, owned by this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def publish(temp: Path, path: Path) -> None:
    """Give ``temp`` the name ``path``; FileExistsError when ``path`` exists (it is never replaced)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: rename, after a check that can race
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.rename(temp, path)
        return
    os.unlink(temp)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temporary files for ``path`` left by processes that no longer run; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            match = _TEMP.match(candidate.name)
            if match and match["name"].startswith(path.stem) and not _alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriteLock:
    """Held by the process writing a run file until it closes it.

    Taken on the temporary file, before it is published: the lock belongs to the file, not its
    name, so the run is marked as being written from the moment it can be seen. Where the file
    system has no record locks (some network and parallel file systems) the run is recorded
    without one: ``--force`` then cannot tell that it is being written, which is better than
    not recording.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDWR)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _LOCK_START)
        except OSError:  # ENOLCK, EOPNOTSUPP, ...: a file nobody else can have opened yet is not busy
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def is_being_written(path: Path) -> bool:
    """True while a live process holds the write lock of ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _LOCK_START)
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(fd)
    return False
