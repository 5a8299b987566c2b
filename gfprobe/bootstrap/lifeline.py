"""The recorded command never outlives ``gfprobe record``.

If the launcher dies, even by SIGKILL, which it cannot catch, the kernel sends its child SIGTERM
(Linux's parent-death signal, ``PR_SET_PDEATHSIG``): the same signal a batch scheduler sends, so
the job ends the way it would end there, its run file stamped ``interrupted``.

A shell between the launcher and Python (``gfprobe record -- sh -c '...'``) dies of that SIGTERM
without passing it on, so every armed Python process whose parent is not itself an armed Python
process (a shell, ``env``, ``nice``) asks for the same signal when that parent dies. Processes
started by an armed Python process (torchrun's ranks, DataLoader workers) are left to their
parent, which ends them itself. The signal fires when the parent *thread* that started the child
exits, so it is asked for only where that thread is the parent's only one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable

WRAPPER_ENV = "GFPROBE_WRAPPER_PID"
ARMED_ENV = "GFPROBE_ARMED_PID"  # the pid of the nearest armed Python process, for its children
_PR_SET_PDEATHSIG = 1


def bind_to_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for the launcher's child: SIGTERM when ``parent_pid`` dies (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        _ask_for_sigterm()
        if os.getppid() != parent_pid:  # the launcher died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def arm() -> None:
    """Called in every Python process that ``gfprobe record`` starts, before the user's code."""
    parent = os.getppid()
    if sys.platform.startswith("linux") and os.environ.get(ARMED_ENV) != str(parent) and _single_threaded(parent):
        with contextlib.suppress(OSError):
            _ask_for_sigterm()
        if os.getppid() != parent:  # the parent died in between
            os.kill(os.getpid(), signal.SIGTERM)
    os.environ[ARMED_ENV] = str(os.getpid())


def _ask_for_sigterm() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _single_threaded(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            return any(line.split() == ["Threads:", "1"] for line in status)
    except OSError:
        return False
