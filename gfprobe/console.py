"""The ``gfprobe`` executable: Ctrl-C ends any command with one line and exit 130, never a traceback.

While the commands are imported (a second or so) a handler ends the process quietly; once they
are, Ctrl-C raises KeyboardInterrupt again, for commands that clean up or say how to resume
(the command group turns the rest into the same quiet exit).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    sys.stderr.write("gfprobe: interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


def main() -> None:
    quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not where the caller ignores it
    if quiet:
        signal.signal(signal.SIGINT, _interrupted)
    from gfprobe.cli import main as cli

    if quiet:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    cli(prog_name="gfprobe")
