"""Fault injection at run-file creation, without torch: builds a run file exactly as the recorder
does and dies of SIGKILL at the k-th call into h5py's write entry points.

Usage (run with the test's Python, from any folder)::

    python faulty_writer.py count OUT            # build OUT, never kill; print the calls as JSON
    python faulty_writer.py kill OUT K           # build OUT, SIGKILL itself at call K
    python faulty_writer.py sweep FOLDER N       # for k = 1..N, a forked child builds
                                                 # FOLDER/k<k>/run.h5 and is killed at call k;
                                                 # prints {k: "killed" | exit status} as JSON

``sweep`` forks after h5py and gfprobe are imported, so each of the many kills costs
milliseconds instead of an interpreter start; each kill is still a separate process.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gfprobe.store import schema
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

# The h5py calls through which a run file is created and written.
ENTRY_POINTS: list[tuple[type, str]] = [
    (h5py.File, "__init__"),
    (h5py.Group, "create_dataset"),
    (h5py.Group, "create_group"),
    (h5py.AttributeManager, "__setitem__"),
    (h5py.Dataset, "resize"),
    (h5py.Dataset, "__setitem__"),
    (h5py.File, "flush"),
    (h5py.File, "swmr_mode"),  # a property: its setter starts SWMR writing
    (h5py.File, "close"),
]


class Tripwire:
    """Counts calls into the entry points and kills the process at call ``kill_at``."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.calls: list[str] = []

    def hit(self, label: str) -> None:
        self.calls.append(label)
        if len(self.calls) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.hit(label)
            return fn(*args, **kwargs)

        return wrapper

    def arm(self) -> None:
        for owner, name in ENTRY_POINTS:
            label = f"{owner.__name__}.{name}"
            original = owner.__dict__[name]
            if isinstance(original, property):
                patched: Any = property(original.fget, self.wrap(original.fset, f"{label} setter"),
                                        original.fdel, original.__doc__)
            else:
                patched = self.wrap(original, label)
            setattr(owner, name, patched)


def build_run(path: Path) -> None:
    """What the recorder does with one optimizer: create, add the stream, append, flush, close."""
    metadata = {"command": ["python", "train.py"], "cwd": str(path.parent), "start_time": "2025-01-01T00:00:00Z",
                "pid": os.getpid(), "every": 1, "masks": "auto"}
    writer = RunWriter(path, metadata, {"note": "fault injection"})
    params = [ParamInfo("0.weight", (4, 3), "weight", "Linear"), ParamInfo("0.bias", (4,), "bias", "Linear"),
              ParamInfo("1.weight", (2, 4), "weight", "Linear")]
    stream = writer.add_stream("SGD", params)
    n = 3
    stats = np.random.default_rng(0).random((n, len(schema.STAT_FIELDS), len(params)))
    stats[:, schema.STAT_FIELDS.index("has_grad"), :] = 1
    writer.append_steps(StepBlock(stream, np.arange(n, dtype=np.int64), np.linspace(0.0, 1.0, n),
                                  np.zeros(n, dtype=np.uint8), stats))
    writer.flush()
    writer.close("complete", {})


def _sweep(folder: Path, last: int) -> dict[int, str]:
    outcome = {}
    for k in range(1, last + 1):
        target = folder / f"k{k}" / "run.h5"
        target.parent.mkdir(parents=True)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                Tripwire(k).arm()
                build_run(target)
            finally:
                os._exit(0)  # reached only when the tripwire never fired (or the build raised)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        outcome[k] = "killed" if killed else f"status {status}"
    return outcome


def main() -> None:
    mode, target = sys.argv[1], Path(sys.argv[2])
    if mode == "count":
        tripwire = Tripwire(None)
        tripwire.arm()
        build_run(target)
        print(json.dumps({"calls": tripwire.calls}))
    elif mode == "kill":
        Tripwire(int(sys.argv[3])).arm()
        build_run(target)
    elif mode == "sweep":
        print(json.dumps(_sweep(target, int(sys.argv[3]))))
    else:
        raise SystemExit(f"unknown mode {mode!r}; expected count, kill or sweep")


if __name__ == "__main__":
    main()
