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
        self._owners: np.ndarray | None = None

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
        """Recorded steps of all streams, the rows still in the tail of a running file included."""
        return self._table_extent([f"steps/{c}" for c in schema.STEP_COLUMNS], schema.RECORDS_TAIL_ROW)[2]

    def _table_extent(self, paths: list[str], tail_row: str) -> tuple[int, int, int]:
        """(rows in the compressed datasets, tail slots that continue them, total) of a table.

        A SWMR reader may see one column extended before its neighbours: trust the shortest.
        Tail slots count only where their row index continues the compressed rows (see
        store/table.py), so a reader that catches a flush half done sees fewer rows, never wrong ones.
        """
        n_main = min(self._f[path].shape[0] for path in paths)
        tail = self._f.get(schema.TAIL_GROUP)
        if tail is None or tail_row not in tail:
            return n_main, 0, n_main
        rows = tail[tail_row][:]
        continues = rows == n_main + np.arange(len(rows))
        n_tail = len(rows) if continues.all() else int(np.argmin(continues))
        n_tail = min([n_tail, *(tail[path].shape[0] for path in paths)])
        return n_main, n_tail, n_main + n_tail

    def _rows(self, path: str, n_main: int, n_tail: int, cells: slice = slice(None)) -> np.ndarray:
        """Rows of one column (cells ``cells`` of a wide one): compressed rows, then the tail's."""
        main = self._f[path]
        first = main[:n_main, cells] if main.ndim == 2 else main[:n_main]
        if not n_tail:
            return np.asarray(first)
        tail = self._f[schema.TAIL_GROUP][path]
        rest = tail[:n_tail, cells] if tail.ndim == 2 else tail[:n_tail]
        return np.concatenate([first, rest])

    def stream_names(self) -> list[str]:
        return _text(self._f["streams"]["optimizer"][:])

    def _stream_columns(self, stream: int) -> np.ndarray:
        if self._owners is None:  # read once: stream() and params() both need it
            self._owners = self._f["params"]["stream"][:]
        return np.flatnonzero(self._owners == stream)

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
        paths = [f"steps/{c}" for c in schema.STEP_COLUMNS] + [f"stats/{f}" for f in fields]
        n_main, n_tail, _ = self._table_extent(paths, schema.RECORDS_TAIL_ROW)

        def column(path: str, cells: slice = slice(None)) -> np.ndarray:
            return self._rows(path, n_main, n_tail, cells)

        rows = np.flatnonzero(column("steps/stream") == index)
        cols = self._stream_columns(index)
        names = self.stream_names()
        stats: dict[str, np.ndarray] = {}
        for field in fields:
            if len(cols) and len(rows):
                block = column(f"stats/{field}", slice(int(cols[0]), int(cols[-1]) + 1))
                stats[field] = block[rows][:, cols - cols[0]]
            else:
                stats[field] = np.zeros((len(rows), len(cols)), dtype=schema.stat_dtype(field))
        return StreamData(
            index=index,
            optimizer=names[index] if index < len(names) else "",
            params=self.params(index),
            steps=column("steps/step")[rows].astype(np.int64),
            times=column("steps/time")[rows],
            skipped=column("steps/skipped")[rows].astype(bool),
            stats=stats,
        )

    def metrics(self) -> dict[str, Metric]:
        names = _text(self._f["metrics"]["names"][:])
        paths = [f"metrics/{c}" for c in schema.METRIC_COLUMNS]
        n_main, n_tail, _ = self._table_extent(paths, schema.METRICS_TAIL_ROW)
        columns = {c: self._rows(f"metrics/{c}", n_main, n_tail) for c in schema.METRIC_COLUMNS}
        out: dict[str, Metric] = {}
        for i, name in enumerate(names):
            sel = columns["name_id"] == i
            out[name] = Metric(name, columns["step"][sel], columns["time"][sel], columns["value"][sel])
        return out


@contextmanager
def open_run(path: str | Path, shards_ok: bool = False) -> Iterator[RunFile]:
    """Open and validate a run file, turning every low-level failure into one clear message.

    A rank file of a sharded run holds one rank's share of each gradient: measures computed from
    it alone would be wrong, so it opens only with ``shards_ok`` (for merging and inspecting).
    """
    p = Path(path)
    if not p.exists():
        raise RunFileError(f"{p}: no such file; pass the path of a run file written by 'gfprobe record'")
    if p.is_dir():
        raise RunFileError(f"{p}: is a folder; pass the run files inside it (e.g. {p}/*.h5)")
    handle = _open_handle(p)
    try:
        _validate(p, handle)
        if not shards_ok:
            _refuse_shard(p, handle)
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
        if not h5py.is_hdf5(path):  # asked only after a failure: it costs an open of its own
            raise RunFileError(f"{path}: not an HDF5 file (truncated or another format); "
                               "pass a gfprobe run file") from exc
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


def _refuse_shard(path: Path, f: h5py.File) -> None:
    if not _attr(f.attrs.get("sharded", False)):
        return
    rank, world = _attr(f.attrs.get("rank", "?")), _attr(f.attrs.get("world_size", "?"))
    from gfprobe.store.merge import merged_name  # merge imports this module

    whole = merged_name(path)
    raise RunFileError(
        f"{path}: rank {rank} of {world} of a sharded (FSDP/DTensor) run holds only that rank's shard of "
        f"each gradient; merge the ranks first: gfprobe merge {whole.with_name(whole.stem)}.rank*{whole.suffix} "
        f"--out {whole}"
    )


def _short(exc: BaseException) -> str:
    return str(exc).split("\n")[0].strip() or type(exc).__name__
