"""The only code that writes run files.

The file is opened in HDF5 single-writer/multiple-reader (SWMR) mode once the first parameter
table is known. From then on every flush leaves a file that readers can open while the run goes
on, and that still reads back after the writing process is killed. SWMR forbids creating
objects after it starts, so the layout is fixed up front and grows only by appending rows
(steps, metrics, parameters) and columns (parameters of a later optimizer).

The file stays in SWMR mode until it is closed, its final status included: a plain read-write
open marks the file "open for write" on disk, and a process killed while holding it would leave
a file no reader can open (see publish.py for how creation avoids the same window).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gfprobe.store import schema
from gfprobe.store.publish import WriteLock, publish, temp_path
from gfprobe.store.reserve import DiskFullError, SpaceReserve
from gfprobe.store.table import Column, GrowingTable, create_table

log = logging.getLogger("gfprobe")


@dataclass(frozen=True)
class ParamInfo:
    """One row of the parameter table."""

    name: str
    shape: tuple[int, ...]
    kind: str
    module_type: str
    mask_source: str = schema.MASK_NONE

    def problem(self) -> str | None:
        """What an adapter got wrong in this row, if anything (a report would misread it)."""
        if self.kind not in schema.PARAM_KINDS:
            return f"parameter {self.name}: kind {self.kind!r} is not one of {', '.join(schema.PARAM_KINDS)}"
        if not 0 < len(self.mask_source.encode()) <= schema.MASK_SOURCE_BYTES:
            limit = schema.MASK_SOURCE_BYTES
            return f"parameter {self.name}: mask source {self.mask_source!r} must be 1 to {limit} bytes"
        return None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StepBlock:
    """Consecutive recorded steps of one stream, ready for the file."""

    stream: int
    steps: np.ndarray  # int64 [n]
    times: np.ndarray  # float64 [n], seconds since the run started
    skipped: np.ndarray  # uint8 [n]
    stats: np.ndarray  # float64 [n, len(STAT_FIELDS), P_stream]
    # gfprobe's own seconds per row (schema.COST_COLUMNS); None: not measured (NaN in the file)
    hook_time: np.ndarray | None = None
    writer_time: np.ndarray | None = None


def _encode(text: str, dtype: np.dtype[np.generic]) -> bytes:
    raw = text.encode("utf-8")
    return raw[: dtype.itemsize]


def attr_value(value: Any) -> Any:
    """A run attribute as HDF5 stores it: scalars and strings as they are (a string with a NUL,
    which HDF5's variable-length text cannot hold, as fixed-length UTF-8 bytes, which read back
    as the same string), anything richer as JSON text. ValueError for a value JSON cannot write
    either (one that contains itself)."""
    if isinstance(value, str):
        if "\x00" in value:
            return np.bytes_(value.encode("utf-8", "surrogateescape"))
        return str(value)  # not a subclass (TorchVersion), which h5py cannot store
    if isinstance(value, bool | int | float | np.generic):
        return value
    return json.dumps(value, default=str)


def stream_attrs_text(attrs: Mapping[str, Any]) -> str:
    """A stream's attributes as the file holds them: one JSON object ("" for none)."""
    return json.dumps(dict(attrs), sort_keys=True, allow_nan=False) if attrs else ""


def stream_attrs_problem(attrs: Mapping[str, Any]) -> str | None:
    """Why ``attrs`` cannot be a stream's attributes, if they cannot: names are text, values
    JSON (without NaN), and all of it fits the column."""
    if any(not isinstance(key, str) or not key for key in attrs):
        return f"stream attribute names must be non-empty strings, got {sorted(map(repr, attrs))}"
    try:
        size = len(stream_attrs_text(attrs).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        return f"stream attributes must be JSON numbers, strings, lists or objects ({exc})"
    limit = schema.STREAM_ATTRS_DTYPE.itemsize
    if size > limit:
        return f"stream attributes take {size} bytes as JSON, more than the {limit} a stream has"
    return None


def _text_size(attrs: Mapping[str, Any]) -> int:
    """About the bytes ``attrs`` take as text (str(), which, unlike JSON, any value has)."""
    return sum(len(str(key)) + len(str(value)) for key, value in attrs.items())


def _set_attrs(group: h5py.Group, attrs: Mapping[str, Any], lenient: bool) -> None:
    """Store each attribute. ``lenient`` (while recording): one HDF5 cannot take is named in a
    warning and the rest stored, since a training's attribute must not cost its run; otherwise
    (a merge, which copies a file) it raises, and nothing is lost unsaid."""
    for key, value in attrs.items():
        try:
            group.attrs[key] = attr_value(value)
        except (TypeError, ValueError, OverflowError) as exc:
            if not lenient:
                raise
            log.warning("gfprobe: run attribute %r not stored: %s", key, exc)


def _record_columns() -> list[Column]:
    steps = [Column(f"steps/{name}", dtype) for name, dtype in schema.STEP_COLUMNS.items()]
    steps += [Column(f"steps/{name}", dtype, math.nan) for name, dtype in schema.COST_COLUMNS.items()]
    stats = [Column(f"stats/{field}", schema.stat_dtype(field), schema.stat_fill(field), wide=True)
             for field in schema.STAT_FIELDS]
    return steps + stats


def _metric_columns() -> list[Column]:
    return [Column(f"metrics/{name}", dtype) for name, dtype in schema.METRIC_COLUMNS.items()]


class RunWriter:
    """Creates a run file and appends to it. Not thread-safe: one thread owns it.

    Appends are buffered; :meth:`flush` makes them durable and visible to readers.
    """

    def __init__(self, path: Path, metadata: Mapping[str, Any], attrs: Mapping[str, Any],
                 lenient_attrs: bool = False) -> None:
        """Create the run file at ``path``, or at ``<stem>.<pid><suffix>`` when ``path`` exists.
        ``lenient_attrs``: an attribute HDF5 cannot store is left out with a warning (recording)."""
        self._lenient_attrs = lenient_attrs
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path(path)
        temp.unlink(missing_ok=True)  # left by an earlier process with this pid
        self._file = h5py.File(temp, "x", libver="latest")
        with contextlib.ExitStack() as undo:  # on any failure: release, close, and leave no temporary
            undo.callback(temp.unlink, missing_ok=True)
            undo.callback(self._file.close)
            # Both hold the file, not its name: they stay with it when it is published (a hard link).
            self._space = SpaceReserve(temp)
            undo.callback(self._space.release)
            self._lock = WriteLock(temp)
            undo.callback(self._lock.release)
            self._space.ensure((_text_size(metadata) + _text_size(attrs)) * 2)
            self._write_header(metadata, attrs)
            self._create_layout()
            self._file.swmr_mode = True  # writes the header and layout to disk
            self.path = self._space.path = _publish_free(temp, path)
            undo.pop_all()
        self._records = GrowingTable(self._file, _record_columns(), schema.RECORDS_TAIL_ROW)
        self._metrics = GrowingTable(self._file, _metric_columns(), schema.METRICS_TAIL_ROW)
        self._n_params = 0
        self._metric_ids: dict[str, int] = {}
        self._stream_cols: list[tuple[int, int]] = []

    def _write_header(self, metadata: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        self._file.attrs["format"] = schema.FORMAT_NAME
        self._file.attrs["schema_version"] = schema.SCHEMA_VERSION
        self._file.attrs["status"] = "running"
        for key, value in metadata.items():
            self._file.attrs[key] = attr_value(value)
        _set_attrs(self._file.create_group("attrs"), attrs, self._lenient_attrs)

    def _create_layout(self) -> None:
        f = self._file
        stream_columns = {**schema.STREAM_COLUMNS, schema.STREAM_ATTRS: schema.STREAM_ATTRS_DTYPE}
        for group, columns in (("params", schema.PARAM_COLUMNS), ("streams", stream_columns)):
            g = f.create_group(group)
            for name, dtype in columns.items():
                g.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(schema.ROW_CHUNK,),
                    **schema.COMPRESSION,
                )
        create_table(f, _record_columns(), schema.RECORDS_TAIL_ROW)
        create_table(f, _metric_columns(), schema.METRICS_TAIL_ROW)
        f["metrics"].create_dataset(
            "names", shape=(0,), maxshape=(None,), dtype=schema.METRIC_NAME_DTYPE, chunks=(64,)
        )

    # -- growth -------------------------------------------------------------------------------
    def add_stream(self, optimizer: str, params: Sequence[ParamInfo], attrs: Mapping[str, Any] | None = None) -> int:
        """Register a stream's parameters as new columns; returns the stream index. ``optimizer``
        names it (an optimizer's class, or a measurement stream's name); ``attrs`` are its own
        attributes (``stream_attrs_problem`` must have passed them)."""
        stream = len(self._stream_cols)
        first, last = self._n_params, self._n_params + len(params)
        self._space.ensure(_PARAM_ROW_BYTES * len(params) + schema.STREAM_ATTRS_DTYPE.itemsize)
        _append(self._file["streams"]["optimizer"], [_encode(optimizer, schema.STREAM_COLUMNS["optimizer"])])
        _append(self._file["streams"][schema.STREAM_ATTRS], [stream_attrs_text(attrs or {}).encode("utf-8")])
        columns = {
            "name": [_encode(p.name, schema.PARAM_COLUMNS["name"]) for p in params],
            "shape": [_encode("x".join(map(str, p.shape)), schema.PARAM_COLUMNS["shape"]) for p in params],
            "numel": [p.numel for p in params],
            "kind": [_encode(p.kind, schema.PARAM_COLUMNS["kind"]) for p in params],
            "module_type": [_encode(p.module_type, schema.PARAM_COLUMNS["module_type"]) for p in params],
            "stream": [stream] * len(params),
            "mask_source": [_encode(p.mask_source, schema.PARAM_COLUMNS["mask_source"]) for p in params],
        }
        for name, values in columns.items():
            _append(self._file["params"][name], values)
        self._records.widen(last)
        self._n_params = last
        self._stream_cols.append((first, last))
        return stream

    def set_mask_source(self, stream: int, index: int, source: str) -> None:
        """Parameter ``index`` of ``stream`` is masked from now on (a run has one source per parameter:
        the last one; its ``active`` counts say from which step on)."""
        column = self._stream_cols[stream][0] + index
        self._file["params"]["mask_source"][column] = _encode(source, schema.PARAM_COLUMNS["mask_source"])

    def append_steps(self, block: StepBlock) -> None:
        n = len(block.steps)
        if n == 0:
            return
        values: dict[str, np.ndarray] = {
            "steps/stream": np.full(n, block.stream), "steps/step": block.steps,
            "steps/time": block.times, "steps/skipped": block.skipped,
            "steps/hook_time": _or_nan(block.hook_time, n), "steps/writer_time": _or_nan(block.writer_time, n),
        }
        for index, field in enumerate(schema.STAT_FIELDS):
            values[f"stats/{field}"] = block.stats[:, index, :]
        self._records.append(values, first_cell=self._stream_cols[block.stream][0])

    def append_metrics(self, rows: Sequence[tuple[str, int, float, float]]) -> None:
        """Append (name, step, time, value) rows."""
        if not rows:
            return
        ids = []
        for name, *_ in rows:
            if name not in self._metric_ids:
                self._metric_ids[name] = len(self._metric_ids)
                _append(self._file["metrics"]["names"], [_encode(name, schema.METRIC_NAME_DTYPE)])
            ids.append(self._metric_ids[name])
        self._metrics.append({"metrics/name_id": np.asarray(ids), "metrics/step": np.array([r[1] for r in rows]),
                              "metrics/time": np.array([r[2] for r in rows]),
                              "metrics/value": np.array([r[3] for r in rows])})

    def add_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add (or replace) run attributes of a file already created."""
        self._space.ensure(_text_size(attrs) * 2)
        _set_attrs(self._file["attrs"], attrs, self._lenient_attrs)

    def _pending_bytes(self) -> int:
        return self._records.pending_bytes + self._metrics.pending_bytes

    def flush(self) -> None:
        """Make every appended row durable and visible to SWMR readers.

        Raises:
            DiskFullError: the disk has no room for these rows; nothing was written, and the
                file reads back as after the previous flush.
        """
        # Twice the rows: each is written once now (to a whole chunk or the tail) and the
        # tail's once more when the file closes, which must fit even on a full disk.
        self._space.ensure(2 * self._pending_bytes())
        self._records.flush()
        self._metrics.flush()
        self._file.flush()

    def close(self, status: str, end_metadata: Mapping[str, Any]) -> None:
        """Write the last rows, stamp the final status, and close. The tail keeps no row.

        On a full disk the rows no flush has written are left out: the rest fits in the reserve.
        """
        try:
            self._space.ensure(self._pending_bytes())
        except DiskFullError:
            self._records.drop_unflushed()
            self._metrics.drop_unflushed()
        self._records.flush(final=True)
        self._metrics.flush(final=True)
        _stamp(self._file, status, end_metadata)
        self._file.close()
        self._lock.release()
        self._space.release()

    def abandon(self) -> None:
        """Close after a write failed, writing nothing more.

        HDF5 retries its failed writes when the file is closed and again at interpreter exit
        (seen on a full disk without a reserve: errors at exit, then a segfault, exit code 139),
        so its descriptor is pointed at /dev/null first. The file keeps what reached it.
        """
        with contextlib.suppress(Exception):
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, self._file.id.get_vfd_handle())
            finally:
                os.close(null)
        with contextlib.suppress(Exception):
            self._file.close()
        self._lock.release()
        self._space.release()


def _stamp(f: h5py.File, status: str, end_metadata: Mapping[str, Any]) -> None:
    f.attrs["status"] = status
    for key, value in end_metadata.items():
        f.attrs[key] = attr_value(value)
    f.flush()


def stamp_outcome(path: Path, status: str | None, end_metadata: Mapping[str, Any]) -> None:
    """Stamp a closed run file afterwards (``gfprobe record`` adds the command's exit code).

    Opened straight into SWMR-write mode, never plain read-write: killed halfway, the file
    still opens for readers. ``status`` None keeps the file's own.
    """
    space = SpaceReserve(path)
    try:
        space.ensure(0)  # DiskFullError on a full disk, before the file is touched
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl)
        with h5py.File(fid) as f:
            _stamp(f, status if status is not None else str(f.attrs.get("status", "unknown")), end_metadata)
    finally:
        space.release()


def _or_nan(values: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, np.nan) if values is None else values


_PARAM_ROW_BYTES = sum(np.dtype(dtype).itemsize for dtype in schema.PARAM_COLUMNS.values())


def _append(ds: h5py.Dataset, values: Any) -> None:
    data = np.asarray(values, dtype=ds.dtype)
    start = ds.shape[0]
    ds.resize((start + len(data),))
    ds[start:] = data


def _publish_free(temp: Path, path: Path) -> Path:
    """Publish ``temp`` as ``path`` or, when taken, ``<stem>.<pid><suffix>``: two recording
    processes never share a file, and an existing file is never replaced."""
    for candidate in (path, path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")):
        try:
            publish(temp, candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"run file {path} exists, and so does its per-process name")
