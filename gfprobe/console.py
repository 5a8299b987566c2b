"""The ``gfprobe`` executable: Ctrl-C ends any command with one line and exit 130, never a traceback.

The handler is set before the commands are imported (a second or so): an interrupt during that
start-up is as quiet as one later.
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
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the caller ignores it
        signal.signal(signal.SIGINT, _interrupted)
    from gfprobe.cli import main as cli

    cli(prog_name="gfprobe")
