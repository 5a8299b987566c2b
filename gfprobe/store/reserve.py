"""Disk space held past a run file's end, so that a disk that fills never fails a write inside HDF5.

HDF5 has no way back from a failed write: a flush that hits ENOSPC half way leaves a file whose
superblock points past its data (unreadable), and closing it later fails again, even at
interpreter exit (a segfault was seen). So before each batch of writes the writer allocates the
space they can take with ``fallocate(FALLOC_FL_KEEP_SIZE)``: the file's size does not change and
HDF5 writes into blocks it already owns. When the disk is full it is the allocation that fails,
before anything is written, and the writer stops with the file as it was after its last flush.

The reserve is kept small (what the next writes need plus :data:`SLACK`) because it is taken from
the user's disk, and it is given back when the file is closed (truncated to its own size, which
frees the blocks past its end). Where
``fallocate`` is not available (not Linux, or a file system without it) the reserve does
nothing and a full disk is met as a write error.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from pathlib import Path

SLACK = 256 * 1024  # metadata of one flush, and the final status and close, with room to spare
_AHEAD = 1024 * 1024  # allocated beyond the need, so that most flushes need no system call
_KEEP_SIZE = 0x01  # <linux/falloc.h>
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """The space the next writes need could not be allocated: nothing was written."""


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):  # no libc fallocate: not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = _fallocate()


class SpaceReserve:
    """Allocated, not yet written, space past the end of one file (held through its own descriptor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR)
        self.supported = _FALLOCATE is not None
        self._reserved_to = 0  # file offset up to which blocks are allocated

    def ensure(self, incoming: int) -> None:
        """Make sure ``incoming`` bytes (plus :data:`SLACK`) can be written past the file's end.

        Raises:
            DiskFullError: the file system has no room for them; nothing was allocated.
        """
        if not self.supported or self._fd is None:
            return
        size = os.fstat(self._fd).st_size
        need = size + incoming + SLACK
        if need <= self._reserved_to:
            return
        if self._allocate(size, need - size + _AHEAD) or self._allocate(size, need - size):
            return
        raise DiskFullError(errno.ENOSPC, f"no room on its disk for {incoming + SLACK:,} more bytes", str(self.path))

    def _allocate(self, offset: int, length: int) -> bool:
        assert _FALLOCATE is not None and self._fd is not None
        if _FALLOCATE(self._fd, _KEEP_SIZE, offset, length) == 0:
            self._reserved_to = offset + length
            return True
        code = ctypes.get_errno()
        if code in _FULL:
            return False
        # Not supported here, or refused for a reason of its own: go on without a reserve.
        self.supported = False
        return True

    def release(self) -> None:
        """Give back the blocks past the file's end and close the descriptor."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            size = os.fstat(self._fd).st_size
            if self.supported and self._reserved_to > size:
                # Truncating to the size the file already has frees the blocks past its end. A hole
                # punched there is accepted and changes nothing on ext4: every closed file kept its
                # whole reserve (1.2 MB for a 94 KB run). The file is closed by now: nothing writes.
                os.ftruncate(self._fd, size)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
