"""Arms recording inside a process started by ``gfprobe record``.

Nothing heavy happens at interpreter start: a post-import hook waits for ``import torch``,
then installs the global optimizer hooks. The recorder opens its file at the first optimizer
step, so launchers, DataLoader workers and other ranks never create one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from gfprobe.bootstrap import lifeline
from gfprobe.bootstrap.imports import after_import
from gfprobe.bootstrap.ledger import tell_launcher
from gfprobe.capture import session
from gfprobe.errors import FOREIGN_ERRORS
from gfprobe.plugin.found import Found, use

# Signals that end a process by default and that a scheduler or a closed terminal sends: the run
# is stamped 'interrupted' before the process dies of the signal, as it would have.
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def install(config_json: str) -> None:
    lifeline.arm()
    config = json.loads(config_json)
    tees: list[MetricTee] = []
    if config.get("metrics"):
        patterns = [(name, re.compile(rx)) for name, rx in config["metrics"].items()]
        sys.stdout = MetricTee(sys.stdout, patterns)
        sys.stderr = MetricTee(sys.stderr, patterns)
        tees = [sys.stdout, sys.stderr]
    after_import("torch", lambda _module: _attach(config, tees), _recording_disabled)
    if "plugins" in config:  # gfprobe record found them: this process need not look again
        use([Found(*entry) for entry in config["plugins"]])
    if config.get("plugins", True):  # none installed: nothing is imported for them
        _start_plugins(config)


def _attach(config: dict[str, Any], tees: list[MetricTee]) -> None:
    from gfprobe.adapters.torch_probe import start_probe

    probe = start_probe(Path(config["out"]), config["command"], every=int(config["every"]), masks=config["masks"],
                        attrs=config.get("attrs", {}), all_ranks=bool(config.get("all_ranks")))
    _finalise_on_exit(probe, tees, config.get("ledger"))


def _start_plugins(config: dict[str, Any]) -> None:
    """Tell every plugin that recording is armed (Lightning's and Transformers' attach their
    callbacks on import of their framework). Nothing a plugin does may stop the script."""
    try:
        from gfprobe.bootstrap.recording import Recording
        from gfprobe.plugin.manager import call_each

        recording = Recording(Path(config["out"]), int(config["every"]), str(config["masks"]),
                              tuple(config["command"]), config.setdefault("attrs", {}), config.get("ledger"))
        for _ in call_each("gfprobe_record_started", lambda answer: answer, recording=recording):
            pass
    except FOREIGN_ERRORS as exc:
        sys.stderr.write(f"gfprobe: plugins not started: {type(exc).__name__}: {exc}\n")


def _finalise_on_exit(probe: Any, tees: list[MetricTee], ledger: str | None) -> None:
    """Stamp how the process ended: an uncaught exception or SIGTERM is not 'complete'.

    A last output line without a newline is scanned for metrics before the file closes.
    """
    outcome = {"status": "complete"}

    def close(status: str) -> None:
        for tee in tees:
            tee.end()
        probe.close(status)
        if probe.failure:
            tell_launcher(ledger, {"failure": probe.failure})

    previous_hook = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        outcome["status"] = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        previous_hook(kind, value, tb)

    sys.excepthook = excepthook
    atexit.unregister(probe.close)
    atexit.register(lambda: close(outcome["status"]))
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        close("interrupted")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die of the signal as the process would have

    for signum in _ENDING_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):  # the script's own handlers stay
            signal.signal(signum, on_signal)


def _recording_disabled(exc: BaseException) -> None:
    sys.stderr.write(f"gfprobe: recording disabled: {type(exc).__name__}: {exc}\n")


class MetricTee:
    """A stand-in for sys.stdout/sys.stderr that passes everything through unchanged and turns
    lines matching ``--metric NAME=REGEX`` into metric values (the first capture group)."""

    def __init__(self, stream: Any, patterns: list[tuple[str, re.Pattern[str]]]) -> None:
        self._stream = stream
        self._patterns = patterns
        self._partial = ""

    def write(self, text: str) -> int:
        written: int = self._stream.write(text)
        with contextlib.suppress(Exception):
            self._scan(text)
        return written

    def end(self) -> None:
        """Scan a final line that never got its newline."""
        if self._partial:
            with contextlib.suppress(Exception):
                self._scan("\n")

    def _scan(self, text: str) -> None:
        lines = re.split(r"[\r\n]", self._partial + text)
        self._partial = lines.pop()[-4096:]
        for line in lines:
            for name, pattern in self._patterns:
                match = pattern.search(line)
                if match:
                    with contextlib.suppress(ValueError):
                        session.log_values({name: float(match.group(1))})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
