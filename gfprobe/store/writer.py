"""The only code that writes run files.

The file is opened in HDF5 single-writer/multiple-reader (SWMR) mode once the first parameter
table is known. From then on every flush leaves a file that readers can open while the run goes
on, and that still reads back after the writing process is killed. SWMR forbids creating
objects or attributes after it starts, so the layout is fixed up front and grows only by
appending rows (steps, metrics, parameters) and columns (parameters of a later optimizer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gfprobe.store import schema


@dataclass(frozen=True)
class ParamInfo:
    """One row of the parameter table."""

    name: str
    shape: tuple[int, ...]
    kind: str
    module_type: str
    mask_source: str = "none"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class StepBlock:
    """Consecutive recorded steps of one stream, ready for the file."""

    stream: int
    steps: np.ndarray  # int64 [n]
    times: np.ndarray  # float64 [n], seconds since the run started
    skipped: np.ndarray  # uint8 [n]
    stats: np.ndarray  # float64 [n, len(STAT_FIELDS), P_stream]


def _encode(text: str, dtype: np.dtype[np.generic]) -> bytes:
    raw = text.encode("utf-8")
    return raw[: dtype.itemsize]


def _attr_value(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; anything richer is stored as JSON text."""
    if isinstance(value, str):
        return str(value)  # plain str: h5py cannot store subclasses such as TorchVersion
    if isinstance(value, bool | int | float | np.generic):
        return value
    return json.dumps(value, default=str)


class RunWriter:
    """Creates a run file and appends to it. Not thread-safe: one thread owns it."""

    def __init__(self, path: Path, metadata: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": never overwrite; the caller decides what to do with an existing file.
        self._file = h5py.File(path, "x", libver="latest")
        self._file.attrs["format"] = schema.FORMAT_NAME
        self._file.attrs["schema_version"] = schema.SCHEMA_VERSION
        self._file.attrs["status"] = "running"
        for key, value in metadata.items():
            self._file.attrs[key] = _attr_value(value)
        user = self._file.create_group("attrs")
        for key, value in attrs.items():
            user.attrs[key] = _attr_value(value)
        self._create_layout()
        self._file.swmr_mode = True
        self._n_params = 0
        self._n_records = 0
        self._n_metrics = 0
        self._metric_ids: dict[str, int] = {}
        self._stream_cols: list[tuple[int, int]] = []

    def _create_layout(self) -> None:
        f = self._file
        for group, columns in (
            ("params", schema.PARAM_COLUMNS),
            ("streams", schema.STREAM_COLUMNS),
            ("steps", schema.STEP_COLUMNS),
            ("metrics", schema.METRIC_COLUMNS),
        ):
            g = f.create_group(group)
            for name, dtype in columns.items():
                g.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(schema.ROW_CHUNK,),
                    **schema.COMPRESSION,
                )
        f["metrics"].create_dataset(
            "names", shape=(0,), maxshape=(None,), dtype=schema.METRIC_NAME_DTYPE, chunks=(64,)
        )
        stats = f.create_group("stats")
        for field in schema.STAT_FIELDS:
            stats.create_dataset(
                field, shape=(0, 0), maxshape=(None, None), dtype=schema.stat_dtype(field),
                chunks=(schema.ROW_CHUNK, schema.COL_CHUNK), fillvalue=schema.stat_fill(field),
                **schema.COMPRESSION,
            )

    # -- growth -------------------------------------------------------------------------------
    def add_stream(self, optimizer: str, params: Sequence[ParamInfo]) -> int:
        """Register an optimizer's parameters as new columns; returns the stream index."""
        stream = len(self._stream_cols)
        first, last = self._n_params, self._n_params + len(params)
        _append(self._file["streams"]["optimizer"], [_encode(optimizer, schema.STREAM_COLUMNS["optimizer"])])
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
        for field in schema.STAT_FIELDS:
            ds = self._file["stats"][field]
            ds.resize((ds.shape[0], last))
        self._n_params = last
        self._stream_cols.append((first, last))
        return stream

    def append_steps(self, block: StepBlock) -> None:
        n = len(block.steps)
        if n == 0:
            return
        start, stop = self._n_records, self._n_records + n
        steps = self._file["steps"]
        _append(steps["stream"], np.full(n, block.stream, dtype="i2"))
        _append(steps["step"], block.steps)
        _append(steps["time"], block.times)
        _append(steps["skipped"], block.skipped)
        first, last = self._stream_cols[block.stream]
        for index, field in enumerate(schema.STAT_FIELDS):
            ds = self._file["stats"][field]
            ds.resize((stop, self._n_params))
            ds[start:stop, first:last] = block.stats[:, index, :].astype(ds.dtype, copy=False)
        self._n_records = stop

    def append_metrics(self, rows: Sequence[tuple[str, int, float, float]]) -> None:
        """Append (name, step, time, value) rows."""
        if not rows:
            return
        metrics = self._file["metrics"]
        ids = []
        for name, *_ in rows:
            if name not in self._metric_ids:
                self._metric_ids[name] = len(self._metric_ids)
                _append(metrics["names"], [_encode(name, schema.METRIC_NAME_DTYPE)])
            ids.append(self._metric_ids[name])
        _append(metrics["name_id"], ids)
        _append(metrics["step"], [r[1] for r in rows])
        _append(metrics["time"], [r[2] for r in rows])
        _append(metrics["value"], [r[3] for r in rows])

    def flush(self) -> None:
        self._file.flush()

    def close(self, status: str, end_metadata: Mapping[str, Any]) -> None:
        """Close, then reopen outside SWMR to stamp the final status (SWMR forbids attributes)."""
        self._file.close()
        with h5py.File(self.path, "r+") as f:
            f.attrs["status"] = status
            for key, value in end_metadata.items():
                f.attrs[key] = _attr_value(value)


def _append(ds: h5py.Dataset, values: Any) -> None:
    data = np.asarray(values, dtype=ds.dtype)
    start = ds.shape[0]
    ds.resize((start + len(data),))
    ds[start:] = data


def claim_path(path: Path) -> Path:
    """The path itself if free, else ``<stem>.<pid><suffix>``: two recording processes never share a file."""
    if not path.exists():
        return path
    return path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
