"""The host side: each recorded step's statistics arrive here from the device and go to the recorder.

``receive`` is the target of the ``io_callback`` the traced update contains. JAX runs it on a
runtime thread while the step executes; it copies two small arrays, appends them to a batch and,
every ``BATCH_STEPS`` rows or ``FLUSH_SECONDS``, hands the batch to the recorder's queue. It
never raises: an exception in a host callback would fail the user's step.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.capture import session
from gfprobe.capture.metadata import BATCH_STEPS, FLUSH_SECONDS, base_metadata
from gfprobe.capture.recorder import PendingBlock, Recorder
from gfprobe_jax._params import ParamTable
from gfprobe_jax._stats import assemble

log = logging.getLogger("gfprobe")



class Probe:
    """Records the statistics of one optax transformation into one run file.

    Made by :func:`gfprobe_jax.watch`; reach it as ``tx.probe``. An unclosed probe closes itself
    when the interpreter exits.
    """

    def __init__(self, recorder: Recorder, optimizer: str) -> None:
        self._recorder = recorder
        self._optimizer = optimizer
        self.table: ParamTable | None = None  # fixed by watch(params=...) or the first init()
        self._lock = threading.RLock()  # callbacks of concurrent executions may overlap
        self._stream: int | None = None  # registered with the first row: no steps, no file
        self._rows: list[np.ndarray] = []
        self._steps: list[int] = []
        self._times: list[float] = []
        self._last_flush = time.monotonic()
        self.active = False  # traced updates compute statistics only while True
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Probe:
        session.activate(self._recorder)
        atexit.register(self._at_exit)
        self.active = True
        return self

    @property
    def path(self) -> Path | None:
        """Where the run is written (None until the first recorded step arrives)."""
        return self._recorder.path or (self._recorder.requested_path if self._stream is not None else None)

    @property
    def failure(self) -> str | None:
        """Why recording stopped early (``None`` while it works); the run file then says ``failed``."""
        error = self._recorder.failed
        return None if error is None else f"{type(error).__name__}: {error}"

    def close(self, status: str = "complete") -> Path | None:
        """Wait for the statistics of steps already dispatched, write them and finalise the file.
        Idempotent; training may go on afterwards, unrecorded."""
        if self._closed:
            return self._recorder.path
        self._closed = True
        atexit.unregister(self._at_exit)
        if self.active:
            _wait_for_callbacks()
        with self._lock:
            self.active = False
            session.deactivate(self._recorder)
            if os.getpid() != self._recorder.pid:
                return None
            with contextlib.suppress(Exception):
                self._flush()
        # Outside the lock: the writer thread may take a while, and no callback should wait for it.
        self._recorder.close("failed" if self._recorder.failed else status)
        _tell_record(self._recorder.path)
        return self._recorder.path

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # at exit, gfprobe must not add a traceback
            self.close(_exit_status())

    def fail(self, exc: BaseException) -> None:
        """Stop recording for good, keep the rows already received, and let training go on."""
        log.warning("gfprobe: recording stopped after an internal error (%s: %s); training goes on",
                    type(exc).__name__, exc)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.active = False
            session.deactivate(self._recorder)
            atexit.unregister(self._at_exit)
            with contextlib.suppress(Exception):
                self._flush()
        self._recorder.close("failed", error=f"{type(exc).__name__}: {exc}")
        _tell_record(self._recorder.path)

    # -- the io_callback target ---------------------------------------------------------------
    def receive(self, step: Any, floats: Any, ints: Any) -> None:
        """One recorded step: its optimizer step index and the two statistics arrays."""
        if not self.active or os.getpid() != self._recorder.pid:
            return  # closed, failed, or a forked child that inherited the compiled step
        try:
            row = assemble(np.asarray(floats), np.asarray(ints))
            index = int(step)
            with self._lock:
                if not self.active:
                    return
                self._rows.append(row)
                self._steps.append(index)
                self._times.append(self._recorder.elapsed())
                self._recorder.current_step = max(self._recorder.current_step, index + 1)
                if len(self._rows) >= BATCH_STEPS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
                    self._flush()
        except Exception as exc:
            self.fail(exc)

    def _flush(self) -> None:
        """Hand the batch to the recorder (its writer thread does the I/O). Holds the lock."""
        if not self._rows:
            return
        if self._stream is None:
            if self.table is None:  # an update was traced, so init() built the table: never here
                raise RuntimeError("statistics arrived before the parameter table was known")
            self._stream = self._recorder.add_stream(self._optimizer, list(self.table.infos))
        # Callbacks are unordered: rows of one batch may arrive out of step order.
        order = np.argsort(np.asarray(self._steps), kind="stable")
        self._recorder.add_block(PendingBlock(
            self._stream, np.asarray(self._steps, dtype=np.int64)[order], np.asarray(self._times)[order],
            np.zeros(len(order), dtype=np.uint8), np.stack(self._rows)[order]))
        self._rows, self._steps, self._times = [], [], []
        self._last_flush = time.monotonic()
        if self._recorder.failed is not None:  # the file cannot be written: stop collecting rows
            self.active = False
            session.deactivate(self._recorder)


def _wait_for_callbacks() -> None:
    """Steps dispatched but not yet executed still owe their callbacks."""
    import jax

    with contextlib.suppress(Exception):
        jax.effects_barrier()  # type: ignore[no-untyped-call]  # jax leaves it unannotated


def _exit_status() -> str:
    """The run's status when the interpreter exits without close(): an uncaught exception's
    traceback has been printed by then, and Python keeps the exception in ``sys.last_value``."""
    error = getattr(sys, "last_value", None)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return "failed" if isinstance(error, BaseException) else "complete"


def _tell_record(path: Path | None) -> None:
    """Under ``gfprobe record``, name the file this process wrote (wherever ``out`` put it), so that
    the record command reports, stamps and checks it as its own."""
    from gfprobe_jax import plugin

    if path is not None and plugin.current is not None:
        plugin.current.wrote(path)


def run_metadata(every: int, masked: bool) -> dict[str, Any]:
    """The run file's root attributes, as the PyTorch adapter writes them, for JAX."""
    from importlib.metadata import PackageNotFoundError, version

    import jax
    import optax

    try:
        jaxlib_version = version("jaxlib")
    except PackageNotFoundError:
        jaxlib_version = "unknown"
    return {
        **base_metadata(sys.argv, "jax"),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "optax_version": optax.__version__,
        "jax_backend": jax.default_backend(),
        "every": every,
        "masks": "explicit" if masked else "none",
    }
