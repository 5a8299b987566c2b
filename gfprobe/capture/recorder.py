"""The framework-agnostic recorder.

Adapters hand it per-step statistics blocks (see ``store.schema.STAT_FIELDS``); it owns the
background writer thread and the run file. The training thread only appends to a queue: every
HDF5 call, and every wait for a device-to-host copy, happens on the writer thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.store.reserve import DiskFullError
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock, stream_attrs_problem

log = logging.getLogger("gfprobe")

StatsSource = np.ndarray | Callable[[], np.ndarray]


@dataclass(frozen=True)
class PendingBlock:
    """Steps whose statistics may still be on their way from a device."""

    stream: int
    steps: np.ndarray
    times: np.ndarray
    skipped: np.ndarray
    stats: StatsSource  # [n, F, P] or a callable that waits for and returns it
    # Seconds the training thread spent inside gfprobe per row (schema.COST_COLUMNS), if measured.
    hook_time: np.ndarray | None = None

    def resolve(self, writer_seconds: float = math.nan) -> StepBlock:
        """The block as the file takes it; ``writer_seconds``, the writer's CPU time to charge to
        it, is spread evenly over its rows."""
        stats = self.stats() if callable(self.stats) else self.stats
        n = len(self.steps)
        return StepBlock(self.stream, self.steps, self.times, self.skipped, np.asarray(stats, dtype=np.float64),
                         self.hook_time, np.full(n, writer_seconds / max(n, 1)))


_STOP = object()


class Recorder:
    """Owns one run file. Thread-safe for callers; the file is touched only by its writer thread.

    The file is created when the first stream (optimizer) is registered, so a process that never
    trains leaves no file behind.
    """

    def __init__(self, out: Path, metadata: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        self.requested_path = out
        self.path: Path | None = None
        self.start_time = time.time()
        self.current_step = 0  # optimizer steps taken by stream 0; the default step of a metric
        self._metadata = dict(metadata, start_time=_iso(self.start_time), pid=os.getpid())
        self._attrs = dict(attrs)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._n_streams = 0
        self._layout: str | None = None  # fixed by the first optimizer a distributed rank sees
        self._closed = False
        self.failed: BaseException | None = None
        self.pid = os.getpid()
        # Started by the first message: processes that import torch but never train (DataLoader
        # workers, launchers) get no thread and no file.
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._writer_cpu = 0.0  # the writer thread's CPU time when it last charged a block

    # -- producer side (any thread) -------------------------------------------------------------
    def _put(self, item: Any) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="gfprobe-writer", daemon=True)
                    self._thread.start()
        self._queue.put(item)

    def use_layout(self, rank: int, world: int, layout: str) -> bool:
        """Say how ranks share the run before the first stream: ``rank0`` (rank 0 writes the file),
        ``replica`` (every rank writes a whole run) or ``sharded`` (every rank writes its shard's
        statistics, to be merged). The last two write ``<stem>.rank<r><suffix>``. The first call
        decides, on every rank, even one that writes nothing; False when a later optimizer asks for
        another layout: a file holds one kind of rows, and every rank must agree."""
        if self._layout is not None:
            return layout == self._layout
        self._layout = layout
        if layout != "rank0":
            out = self.requested_path
            self.requested_path = out.with_name(f"{out.stem}.rank{rank}{out.suffix}")
            self._metadata.update(rank=rank, world_size=world, sharded=layout == "sharded")
        return True

    def add_stream(self, optimizer: str, params: Sequence[ParamInfo], attrs: Mapping[str, Any] | None = None) -> int:
        """Register a stream: an optimizer's parameters (``optimizer`` its class name), or a
        measurement stream's (``optimizer`` its name, ``attrs`` its protocol). ValueError for what
        an adapter got wrong (a kind outside ``schema.PARAM_KINDS``, a mask source too long for
        its column, attributes the stream's column cannot hold)."""
        for param in params:
            problem = param.problem()
            if problem is not None:
                raise ValueError(problem)
        problem = stream_attrs_problem(attrs or {})
        if problem is not None:
            raise ValueError(problem)
        stream = self._n_streams
        self._n_streams += 1
        self._put(("stream", optimizer, list(params), dict(attrs or {})))
        return stream

    def set_mask_source(self, stream: int, index: int, source: str) -> None:
        """Parameter ``index`` of ``stream`` got a mask after its stream was added (gradual pruning)."""
        self._put(("mask_source", stream, index, source))

    def add_block(self, block: PendingBlock) -> None:
        self._put(("block", block))

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        now = time.time() - self.start_time
        at = self.current_step if step is None else int(step)
        rows = [(name, at, now, float(v)) for name, v in values.items()]
        self._put(("metrics", rows))

    def add_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Run attributes learnt after the recorder was made (a framework's hyper-parameters):
        in the file's header when it is not created yet, else added to it by the writer thread."""
        with self._start_lock:
            if self._thread is None:
                self._attrs.update(attrs)
                return
        self._put(("attrs", dict(attrs)))

    def elapsed(self) -> float:
        return time.time() - self.start_time

    def close(self, status: str = "complete", timeout: float = 60.0, error: str | None = None) -> Path | None:
        """Write everything queued, stamp the final status, and stop the writer thread."""
        if self._closed:
            return self.path
        self._closed = True
        if self._thread is None:
            return None
        self._queue.put(("close", status, error))
        self._queue.put(_STOP)
        self._thread.join(timeout)
        return self.path

    # -- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        writer: RunWriter | None = None
        early_metrics: list[tuple[str, int, float, float]] = []
        self._writer_cpu = time.thread_time()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.failed is not None:
                continue  # drain without writing: recording stopped, training must not block
            try:
                writer = self._handle(item, writer, early_metrics)
            except BaseException as exc:
                self._fail(exc, writer)

    def _handle(self, item: tuple[Any, ...], writer: RunWriter | None, early: list[Any]) -> RunWriter | None:
        kind = item[0]
        if kind == "stream":
            if writer is None:
                writer = self._open()
            writer.add_stream(item[1], item[2], item[3])
            writer.append_metrics(early)
            early.clear()
            self._writer_cpu = time.thread_time()  # creating the file and its columns: set-up, not per step
        elif kind == "block" and writer is not None:
            writer.append_steps(item[1].resolve(self._charge_writer()))
        elif kind == "metrics":
            if writer is None:
                early.extend(item[1])
            else:
                writer.append_metrics(item[1])
        elif kind == "mask_source" and writer is not None:
            writer.set_mask_source(item[1], item[2], item[3])
        elif kind == "attrs":
            if writer is None:
                self._attrs.update(item[1])
            else:
                writer.add_attrs(item[1])
        elif kind == "close" and writer is not None:
            end = {"end_time": _iso(time.time()), **({"error": item[2]} if item[2] else {})}
            writer.close(item[1], end)
            return None
        if writer is not None and self._queue.empty():
            writer.flush()  # one flush per burst: readers see data within a flush interval
        return writer

    def _charge_writer(self) -> float:
        """The writer thread's CPU seconds since it last charged a block: the previous block's
        write and flush, metrics. Each block carries what came before it, since a block's own
        write is done only after its rows are stored. Creating the file and a stream's columns is
        set-up, not a per-step cost: the count starts again after it."""
        now = time.thread_time()
        spent, self._writer_cpu = now - self._writer_cpu, now
        return spent

    def _open(self) -> RunWriter:
        writer = RunWriter(self.requested_path, self._metadata, self._attrs, lenient_attrs=True)
        self.path = writer.path
        return writer

    def _fail(self, exc: BaseException, writer: RunWriter | None) -> None:
        self.failed = exc
        path = self.path or self.requested_path
        if isinstance(exc, DiskFullError):
            why = f"no space left on the disk of {path}; the steps written so far are kept and the file stays readable"
        elif _write_failed(exc):
            why = f"writing {path} failed ({_one_line(exc)})"
        else:
            why = f"an internal error ({type(exc).__name__}: {_one_line(exc)})"
        log.warning("gfprobe: recording stopped: %s; training goes on", why)
        if writer is None:
            return
        if _write_failed(exc):
            writer.abandon()
            return
        with contextlib.suppress(BaseException):
            writer.close("failed", {"end_time": _iso(time.time()), "error": f"{type(exc).__name__}: {exc}"})


def _write_failed(exc: BaseException) -> bool:
    """An I/O error inside HDF5 (h5py raises OSError or RuntimeError with HDF5's message), after
    which closing the file normally would only fail again. A full disk is caught before that
    (DiskFullError, nothing written) where the file system can reserve space."""
    if isinstance(exc, DiskFullError):
        return False
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "write failed" in str(exc))


def _one_line(exc: BaseException) -> str:
    """HDF5's messages hold newlines (a timestamp's): one warning is one line."""
    return " ".join(str(exc).split())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
