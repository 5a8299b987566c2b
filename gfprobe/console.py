"""The ``gfprobe`` executable: Ctrl-C ends any command with one line and exit 130, never a traceback.

Until a command starts (the commands import for a second or so, then click parses the command
line) a handler ends the process quietly. The command group puts Python's own handler back as
it invokes a command, so commands that clean up or say how to resume see KeyboardInterrupt, and
turns the rest into the same quiet exit.

Before ``main`` runs, only Python's own start-up, gfprobe's ``__init__`` (which imports nothing)
and the import of this module can be interrupted, and ``python -m gfprobe`` holds SIGINT back
during the import: what Python prints then is what any Python program prints.
"""

from __future__ import annotations

# _signal is the interpreter's own, already loaded: ``signal`` imports enum first, a few ms in
# which a Ctrl-C would still print a traceback.
import _signal
import os

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def _interrupted(_signum: int, _frame: object) -> None:
    # Ends the process at once rather than raising: an exception raised by a signal handler can
    # land in a callback whose exceptions Python ignores (an import lock's weakref callback was
    # seen to swallow SystemExit, and the command then started). Nothing needs cleaning up yet.
    os.write(2, b"gfprobe: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def _quiet_until_a_command_runs() -> None:
    """Install the quiet handler, unless the caller made the process ignore SIGINT."""
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _interrupted)


def restore_keyboard_interrupt() -> None:
    """Give commands Python's KeyboardInterrupt back (a no-op where the quiet handler is not set)."""
    if _signal.getsignal(_signal.SIGINT) is _interrupted:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


def main(release_sigint: bool = False) -> None:
    """Run the command line.

    Args:
        release_sigint: unblock SIGINT once the quiet handler is set (``python -m gfprobe``
            blocks it until then); the command inherits the signal mask, so it must not stay.
    """
    _quiet_until_a_command_runs()
    if release_sigint:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})
    from gfprobe.cli import main as cli

    cli(prog_name="gfprobe")
