"""``python -m gfprobe``: the ``gfprobe`` command."""

import _signal

# Ctrl-C is held back, not lost, while the command line is imported: main() sets its quiet
# handler first and then lets a pending one through. So no Ctrl-C during start-up ends in a
# traceback through gfprobe's code (see console.py).
_already_blocked = _signal.SIGINT in _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})

from gfprobe.console import main  # noqa: E402 (after the mask, on purpose)

main(release_sigint=not _already_blocked)
