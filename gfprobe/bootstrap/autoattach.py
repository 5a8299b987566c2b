"""Arms recording inside a process started by ``gfprobe record``.

Nothing heavy happens at interpreter start: a post-import hook waits for ``import torch``,
then installs the global optimizer hooks. The recorder opens its file at the first optimizer
step, so launchers, DataLoader workers and other ranks never create one.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from gfprobe.bootstrap import lifeline
from gfprobe.capture import session

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
    if "torch" in sys.modules:
        _attach(config, tees)
    else:
        sys.meta_path.insert(0, _AfterImport("torch", lambda _m: _attach(config, tees)))


def _attach(config: dict[str, Any], tees: list[MetricTee]) -> None:
    from gfprobe.adapters.torch_probe import Probe, run_metadata
    from gfprobe.capture.recorder import Recorder

    recorder = Recorder(
        Path(config["out"]),
        dict(run_metadata(config["command"]), every=config["every"], masks=config["masks"]),
        config.get("attrs", {}),
    )
    probe = Probe(recorder, every=int(config["every"]), masks=config["masks"],
                  all_ranks=bool(config.get("all_ranks"))).start()
    _finalise_on_exit(probe, tees, config.get("ledger"))


def _finalise_on_exit(probe: Any, tees: list[MetricTee], ledger: str | None) -> None:
    """Stamp how the process ended: an uncaught exception or SIGTERM is not 'complete'.

    A last output line without a newline is scanned for metrics before the file closes.
    """
    outcome = {"status": "complete"}

    def close(status: str) -> None:
        for tee in tees:
            tee.end()
        probe.close(status)
        if ledger and probe.failure:
            _tell_launcher(ledger, probe.failure)

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


def _tell_launcher(ledger: str, failure: str) -> None:
    """One line for ``gfprobe record``, which cannot see why a process recorded nothing."""
    with contextlib.suppress(OSError), open(ledger, "a", encoding="utf-8") as f:
        f.write(json.dumps({"pid": os.getpid(), "failure": failure}) + "\n")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``module_name`` finishes importing."""

    def __init__(self, module_name: str, callback: Callable[[ModuleType], None]) -> None:
        self._name = module_name
        self._callback = callback

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self._name:
            return None
        sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:  # whichever finder would have found it (site-packages, editable, ...)
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original_exec = loader.exec_module
        callback = self._callback

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            try:
                callback(module)
            except Exception as exc:
                sys.stderr.write(f"gfprobe: recording disabled: {type(exc).__name__}: {exc}\n")

        loader.exec_module = exec_module
        return spec


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
