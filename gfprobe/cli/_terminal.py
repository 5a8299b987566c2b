"""The terminal of a live command (``gfprobe watch``): keys read one at a time without blocking,
and the terminal's settings put back on every way out: a key, Ctrl-C, an exception, SIGTERM or
SIGHUP (a closed ssh session)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import time
import tty
from collections.abc import Iterator
from types import FrameType
from typing import TextIO


class Keys:
    """Keys pressed on a terminal in cbreak mode: unbuffered and unechoed, while Ctrl-C still
    interrupts. Without a terminal (a pipe, CI) no key ever comes."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @property
    def reading(self) -> bool:
        return self._fd is not None

    def wait(self, seconds: float) -> str:
        """The keys pressed within ``seconds`` ("" when none): returns at the first."""
        if self._fd is None:
            time.sleep(seconds)
            return ""
        ready, _, _ = select.select([self._fd], [], [], seconds)
        if not ready:
            return ""
        data = os.read(self._fd, 1024)
        if not data:  # the terminal hung up: it would read as ready forever
            self._fd = None
        return data.decode("utf-8", "replace")


@contextlib.contextmanager
def keys(stream: TextIO) -> Iterator[Keys]:
    """:class:`Keys` from ``stream``, in cbreak mode while the block runs (when it is a terminal)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        fd = -1
    if fd < 0 or not os.isatty(fd):
        yield Keys(None)
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield Keys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


@contextlib.contextmanager
def exit_on_signals(*signums: signal.Signals) -> Iterator[None]:
    """Turn ``signums`` into ``SystemExit(128 + N)`` while the block runs, so that every ``finally``
    (the terminal's settings, the alternate screen) runs before the process ends. A signal the
    process was started with ignored (``nohup``) stays ignored."""

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {}
    for signum in signums:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, leave)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Resized:
    """Set when the terminal changes size (SIGWINCH), while the block of :meth:`watching` runs."""

    def __init__(self) -> None:
        self.flag = False

    def take(self) -> bool:
        flag, self.flag = self.flag, False
        return flag

    @contextlib.contextmanager
    def watching(self) -> Iterator[Resized]:
        def note(_signum: int, _frame: FrameType | None) -> None:
            self.flag = True

        previous = signal.signal(signal.SIGWINCH, note)
        try:
            yield self
        finally:
            signal.signal(signal.SIGWINCH, previous)
