"""The only code that reads run files. Never imports torch.

Files are opened in SWMR read mode, so a run that is still writing, or whose process was
killed, reads back up to its last flush.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gfprobe.errors import RunFileError
from gfprobe.store import schema


@dataclass(frozen=True)
class ParamTable:
    """The parameters of one stream, in column order."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    numel: np.ndarray
    kinds: list[str]
    module_types: list[str]
    mask_sources: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, kind: str | None) -> np.ndarray:
        """Column indices of parameters of ``kind`` (all parameters when ``kind`` is None)."""
        return np.array([i for i, k in enumerate(self.kinds) if kind is None or k == kind], dtype=int)


@dataclass(frozen=True)
class StreamData:
    """The records of one optimizer (stream): step index, time, skipped flag, and statistics."""

    index: int
    optimizer: str
    params: ParamTable
    steps: np.ndarray
    times: np.ndarray
    skipped: np.ndarray
    stats: dict[str, np.ndarray]  # field -> [records, params]


@dataclass(frozen=True)
class Metric:
    name: str
    steps: np.ndarray
    times: np.ndarray
    values: np.ndarray


def _text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values]


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x")) if text else ()


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class RunFile:
    """An open run file. Use :func:`open_run` as a context manager."""

    def __init__(self, path: Path, handle: h5py.File) -> None:
        self.path = path
        self._f = handle

    @property
    def metadata(self) -> dict[str, Any]:
        return {k: _attr(v) for k, v in self._f.attrs.items()}

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _attr(v) for k, v in self._f["attrs"].attrs.items()}

    @property
    def n_streams(self) -> int:
        return int(self._f["streams"]["optimizer"].shape[0])

    @property
    def n_records(self) -> int:
        return int(self._f["steps"]["step"].shape[0])

    def stream_names(self) -> list[str]:
        return _text(self._f["streams"]["optimizer"][:])

    def _stream_columns(self, stream: int) -> np.ndarray:
        owner = self._f["params"]["stream"][:]
        return np.flatnonzero(owner == stream)

    def params(self, stream: int = 0) -> ParamTable:
        cols = self._stream_columns(stream)
        p = self._f["params"]

        def column(name: str) -> np.ndarray:
            return p[name][:][cols] if len(cols) else np.empty(0, dtype=p[name].dtype)

        return ParamTable(
            names=_text(column("name")),
            shapes=[_shape(s) for s in _text(column("shape"))],
            numel=column("numel").astype(np.int64),
            kinds=_text(column("kind")),
            module_types=_text(column("module_type")),
            mask_sources=_text(column("mask_source")),
        )

    def stream(self, index: int = 0, fields: tuple[str, ...] = schema.STAT_FIELDS) -> StreamData:
        """Read one stream; only the statistics named in ``fields`` are read from disk."""
        if not 0 <= index < max(self.n_streams, 1):
            raise RunFileError(
                f"{self.path}: has no optimizer stream {index}; it has {self.n_streams} "
                f"(use --stream 0..{max(self.n_streams - 1, 0)})"
            )
        unknown = set(fields) - set(schema.STAT_FIELDS)
        if unknown:
            raise RunFileError(f"unknown statistic {sorted(unknown)}; known: {', '.join(schema.STAT_FIELDS)}")
        steps = self._f["steps"]
        # A SWMR reader may see a dataset extended before its neighbours: trust the shortest.
        n = min(steps[c].shape[0] for c in schema.STEP_COLUMNS)
        n = min([n, *(self._f["stats"][f].shape[0] for f in fields)])
        rows = np.flatnonzero(steps["stream"][:n] == index)
        cols = self._stream_columns(index)
        names = self.stream_names()
        stats: dict[str, np.ndarray] = {}
        for field in fields:
            ds = self._f["stats"][field]
            if len(cols) and len(rows):
                block = ds[: n, int(cols[0]) : int(cols[-1]) + 1]
                stats[field] = block[rows][:, cols - cols[0]]
            else:
                stats[field] = np.zeros((len(rows), len(cols)), dtype=ds.dtype)
        return StreamData(
            index=index,
            optimizer=names[index] if index < len(names) else "",
            params=self.params(index),
            steps=steps["step"][:n][rows].astype(np.int64),
            times=steps["time"][:n][rows],
            skipped=steps["skipped"][:n][rows].astype(bool),
            stats=stats,
        )

    def metrics(self) -> dict[str, Metric]:
        m = self._f["metrics"]
        names = _text(m["names"][:])
        n = min(m[c].shape[0] for c in schema.METRIC_COLUMNS)
        ids = m["name_id"][:n]
        out: dict[str, Metric] = {}
        for i, name in enumerate(names):
            sel = ids == i
            out[name] = Metric(name, m["step"][:n][sel], m["time"][:n][sel], m["value"][:n][sel])
        return out


@contextmanager
def open_run(path: str | Path) -> Iterator[RunFile]:
    """Open and validate a run file, turning every low-level failure into one clear message."""
    p = Path(path)
    if not p.exists():
        raise RunFileError(f"{p}: no such file; pass the path of a run file written by 'gfprobe record'")
    if p.is_dir():
        raise RunFileError(f"{p}: is a folder; pass the run files inside it (e.g. {p}/*.h5)")
    if not h5py.is_hdf5(p):
        raise RunFileError(f"{p}: not an HDF5 file (truncated or another format); pass a gfprobe run file")
    handle = _open_handle(p)
    try:
        _validate(p, handle)
        yield RunFile(p, handle)
    except (KeyError, OSError, ValueError) as exc:
        raise RunFileError(f"{p}: damaged run file ({_short(exc)})") from exc
    finally:
        handle.close()


def _open_handle(path: Path) -> h5py.File:
    """A plain open first: it detects truncation, which SWMR mode does not (it retries reads of
    a truncated file for a long time). HDF5 refuses a plain open of a file whose writer is still
    running or was killed; those are exactly the files SWMR mode reads safely."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        message = _short(exc)
        if "already open for write" not in message:
            kind = "truncated" if "truncated" in message else "damaged"
            raise RunFileError(f"{path}: {kind} HDF5 file ({message}); it cannot be read") from exc
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as exc:
        raise RunFileError(f"{path}: cannot be read as HDF5 ({_short(exc)}); the file is damaged") from exc


def _validate(path: Path, f: h5py.File) -> None:
    fmt = _attr(f.attrs.get("format", ""))
    if fmt != schema.FORMAT_NAME:
        raise RunFileError(
            f"{path}: an HDF5 file, but not a gfprobe run file (no 'format' attribute '{schema.FORMAT_NAME}')"
        )
    version = int(f.attrs.get("schema_version", -1))
    if version > schema.SCHEMA_VERSION:
        raise RunFileError(
            f"{path}: written with run-file schema {version}, newer than this gfprobe reads "
            f"({schema.SCHEMA_VERSION}); upgrade gfprobe"
        )
    if version < 1:
        raise RunFileError(f"{path}: unknown run-file schema {version}")
    missing = [g for g in ("params", "streams", "steps", "stats", "metrics", "attrs") if g not in f]
    if missing:
        raise RunFileError(f"{path}: damaged run file, missing groups {', '.join(missing)}")


def _short(exc: BaseException) -> str:
    return str(exc).split("\n")[0].strip() or type(exc).__name__
