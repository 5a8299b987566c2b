"""The only code that reads run files (validate.py checks each one as it is opened). Never
imports torch.

Files are opened in SWMR read mode, so a run that is still writing, or whose process was
killed, reads back up to its last flush. Every failure to read a file is a RunFileError that
names it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import h5py
import numpy as np

from gfprobe.errors import RunFileError
from gfprobe.store import schema
from gfprobe.store.snapshot import read_table
from gfprobe.store.validate import Layout, Problem, plain_attr, short_error, validate

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
# What h5py and NumPy raise on a file whose contents are damaged (RecursionError is a RuntimeError).
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError)
SWMR_READ_ATTEMPTS = 20


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
    """The records of one stream (an optimizer's, or a measurement stream's): step index, time,
    skipped flag, statistics, and the stream's own attributes."""

    index: int
    optimizer: str  # the stream's name: the optimizer's class, or the measurement stream's name
    params: ParamTable
    steps: np.ndarray
    times: np.ndarray
    skipped: np.ndarray
    stats: dict[str, np.ndarray]  # field -> [records, params]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # gfprobe's own seconds per record (schema.COST_COLUMNS): None in files written before them
    hook_time: np.ndarray | None = None
    writer_time: np.ndarray | None = None

    @property
    def protocol(self) -> str:
        """How the stream's gradient was taken: ``minibatch`` (an optimizer's) or ``probe-batch``."""
        return stream_protocol(self.attrs)


def stream_protocol(attrs: dict[str, Any]) -> str:
    """A stream's protocol from its attributes; a stream without one (every file written before
    streams had attributes) is an optimizer's minibatch gradient."""
    return str(attrs.get(schema.PROTOCOL, schema.MINIBATCH))


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


def _reading(what: str) -> Callable[[Callable[Concatenate[RunFile, P], R]], Callable[Concatenate[RunFile, P], R]]:
    """Turn the h5py/NumPy errors of a read method into a RunFileError naming the file."""

    def decorate(method: Callable[Concatenate[RunFile, P], R]) -> Callable[Concatenate[RunFile, P], R]:
        @functools.wraps(method)
        def wrapper(self: RunFile, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(self, *args, **kwargs)
            except _READ_ERRORS as exc:
                raise RunFileError(f"{self.path}: damaged run file: cannot read its {what} "
                                   f"({short_error(exc)})") from exc
            except MemoryError as exc:
                raise _out_of_memory(self.path, f"read its {what}", exc) from None

        return wrapper

    return decorate


class RunFile:
    """An open run file. Use :func:`open_run` as a context manager."""

    def __init__(self, path: Path, handle: h5py.File, layout: Layout) -> None:
        self.path = path
        self._f = handle
        self._layout = layout

    @property
    def metadata(self) -> dict[str, Any]:
        """Root attributes as plain data (read once, when the file was opened)."""
        return dict(self._layout.metadata)

    @property
    def attrs(self) -> dict[str, Any]:
        """The user's run attributes as plain data (read once, when the file was opened)."""
        return dict(self._layout.attrs)

    @property
    @_reading("optimizer streams")
    def n_streams(self) -> int:
        return int(self._f["streams"]["optimizer"].shape[0])

    @property
    @_reading("recorded steps")
    def n_records(self) -> int:
        """Recorded steps of all streams, the rows still in the tail of a running file included."""
        return read_table(self._f, [f"steps/{c}" for c in schema.STEP_COLUMNS], schema.RECORDS_TAIL_ROW).rows

    @_reading("optimizer streams")
    def stream_names(self) -> list[str]:
        return _text(self._f["streams"]["optimizer"][:])

    @_reading("stream attributes")
    def stream_attrs(self, index: int) -> dict[str, Any]:
        """Stream ``index``'s own attributes (``protocol``, ...); none in files that predate them."""
        column = self._f["streams"].get(schema.STREAM_ATTRS)
        if column is None or index >= column.shape[0]:
            return {}
        value = plain_attr(column[index])
        if value == "":
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"the attributes of stream {index} are not a JSON object")
        return value

    def stream_index(self, key: int | str) -> int:
        """The index of the stream ``key`` names: an index (``1`` or ``"1"``) or a stream's name
        (``"probe"``, ``"Adam"``), which must be unique in the file."""
        if isinstance(key, int) or key.isdecimal():
            return int(key)
        names = self.stream_names()
        found = [i for i, name in enumerate(names) if name == key]
        listed = ", ".join(f"{i} {name}" for i, name in enumerate(names)) or "none"
        if not found:
            raise RunFileError(f"{self.path}: has no stream named {key!r}; its streams: {listed}")
        if len(found) > 1:
            raise RunFileError(f"{self.path}: {len(found)} streams are named {key!r}; pass one's index "
                               f"(its streams: {listed})")
        return found[0]

    def _stream_columns(self, stream: int) -> np.ndarray:
        return np.flatnonzero(self._layout.owners == stream)

    @_reading("parameter table")
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

    @_reading("statistics")
    def stream(self, key: int | str = 0, fields: tuple[str, ...] = schema.STAT_FIELDS) -> StreamData:
        """Read one stream, by index or name (:meth:`stream_index`); only the statistics named in
        ``fields`` are read from disk."""
        index = self.stream_index(key)
        if not 0 <= index < max(self.n_streams, 1):
            raise RunFileError(
                f"{self.path}: has no optimizer stream {index}; it has {self.n_streams} "
                f"(use --stream 0..{max(self.n_streams - 1, 0)})"
            )
        unknown = set(fields) - set(schema.STAT_FIELDS)
        if unknown:
            raise RunFileError(f"unknown statistic {sorted(unknown)}; known: {', '.join(schema.STAT_FIELDS)}")
        costs = [c for c in schema.COST_COLUMNS if f"steps/{c}" in self._f]  # validated: hard links only
        paths = [f"steps/{c}" for c in (*schema.STEP_COLUMNS, *costs)] + [f"stats/{f}" for f in fields]
        table = read_table(self._f, paths, schema.RECORDS_TAIL_ROW)

        def column(path: str, cells: slice = slice(None)) -> np.ndarray:
            return table.column(self._f, path, cells)

        rows = np.flatnonzero(column("steps/stream") == index)
        cols = self._stream_columns(index)
        names = self.stream_names()
        stats: dict[str, np.ndarray] = {}
        for field in fields:
            if len(cols) and len(rows):
                block = column(f"stats/{field}", slice(int(cols[0]), int(cols[-1]) + 1))
                stats[field] = _pick(block, rows, cols - cols[0])
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
            attrs=self.stream_attrs(index),
            hook_time=column("steps/hook_time")[rows].astype(np.float64) if "hook_time" in costs else None,
            writer_time=column("steps/writer_time")[rows].astype(np.float64) if "writer_time" in costs else None,
        )

    @_reading("metrics")
    def metrics(self) -> dict[str, Metric]:
        names = _text(self._f["metrics"]["names"][:])
        paths = [f"metrics/{c}" for c in schema.METRIC_COLUMNS]
        table = read_table(self._f, paths, schema.METRICS_TAIL_ROW)
        columns = {c: table.column(self._f, f"metrics/{c}") for c in schema.METRIC_COLUMNS}
        out: dict[str, Metric] = {}
        for i, name in enumerate(names):
            sel = columns["name_id"] == i
            out[name] = Metric(name, columns["step"][sel], columns["time"][sel], columns["value"][sel])
        return out


def _pick(block: np.ndarray, rows: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``block[rows][:, cells]`` of a block just read, copying only what selects a part: ``rows``
    and ``cells`` are ascending, so as many as the block has are all of it."""
    if len(rows) != block.shape[0]:
        block = block[rows]
    if len(cells) != block.shape[1]:
        block = block[:, cells]
    return block


@contextmanager
def open_run(path: str | Path, shards_ok: bool = False, locking: bool = True) -> Iterator[RunFile]:
    """Open and validate a run file, turning every failure to do so into one clear message.

    Only opening and validating are guarded here: the RunFile's read methods name the file in
    their own errors, and an exception raised in the caller's ``with`` body passes through as it is.
    A rank file of a sharded run holds one rank's share of each gradient: measures computed from
    it alone would be wrong, so it opens only with ``shards_ok`` (for merging and inspecting).
    ``locking=False`` opens it without HDF5's file lock, for a reader that opens a live file over
    and over (``gfprobe watch``): while a reader holds that lock, the SWMR-write open with which
    ``gfprobe record`` stamps a finished run's exit code fails (the launcher retries it, for a while).
    """
    p = Path(path)
    _check_file(p)
    handle = _open_handle(p, locking)
    try:
        layout = _validate(p, handle)
        if not shards_ok:
            _refuse_shard(p, layout.metadata)
    except BaseException:
        _close(handle)
        raise
    try:
        yield RunFile(p, handle, layout)
    finally:
        _close(handle)


def _check_file(path: Path) -> None:
    """Refuse what is not a regular file from its status alone: opening a FIFO would block."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file; pass the path of a run file written by 'gfprobe record'") from None
    except OSError as exc:
        raise RunFileError(f"{path}: cannot be read ({short_error(exc)})") from None
    if stat.S_ISDIR(mode):
        raise RunFileError(f"{path}: is a folder; pass the run files inside it (e.g. {path}/*.h5)")
    if not stat.S_ISREG(mode):
        raise RunFileError(f"{path}: not a regular file (a pipe, socket or device); pass a run file")
    if not os.access(path, os.R_OK):
        raise RunFileError(f"{path}: cannot be read (permission denied)")


def _close(handle: h5py.File) -> None:
    # A read-only handle loses nothing on close; a failure there must not hide the caller's error.
    with contextlib.suppress(*_READ_ERRORS):
        handle.close()


def _open_handle(path: Path, locking: bool = True) -> h5py.File:
    """A plain open first: it detects truncation, which SWMR mode does not (it retries reads of
    a truncated file for a long time). HDF5 refuses a plain open of a file whose writer is still
    running or was killed; those are exactly the files SWMR mode reads safely."""
    try:
        return h5py.File(path, "r", locking=None if locking else False)  # None: HDF5's default
    except _READ_ERRORS as exc:
        message = short_error(exc)
        if not h5py.is_hdf5(path):  # asked only after a failure: it costs an open of its own
            raise RunFileError(f"{path}: not an HDF5 file (truncated or another format); "
                               "pass a gfprobe run file") from exc
        if "already open for write" not in message:
            kind = "truncated" if "truncated" in message else "damaged"
            raise RunFileError(f"{path}: {kind} HDF5 file ({message}); it cannot be read") from exc
    try:
        return _open_swmr(path, locking)
    except _READ_ERRORS as exc:
        raise RunFileError(f"{path}: cannot be read as HDF5 ({short_error(exc)}); the file is damaged") from exc


def _open_swmr(path: Path, locking: bool = True) -> h5py.File:
    """Open in SWMR read mode, retrying a metadata read whose checksum fails only a few times.

    A SWMR reader retries such a read because the writer may be rewriting that metadata; HDF5's
    default, 100 tries with exponential backoff, turns one damaged byte into a wait of many
    minutes. ``SWMR_READ_ATTEMPTS`` tries wait milliseconds, far longer than a write takes.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    set_attempts = _metadata_read_attempts_setter()
    if set_attempts is not None:
        set_attempts(fapl.id, SWMR_READ_ATTEMPTS)
    if not locking:
        fapl.set_file_locking(False, True)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl)
    return h5py.File(fid)


@functools.cache
def _metadata_read_attempts_setter() -> Callable[[int, int], int] | None:
    """HDF5's H5Pset_metadata_read_attempts, which h5py does not wrap, from the copy of the
    library h5py uses (found among the libraries this process mapped: Linux only). None if it
    cannot be found for sure; SWMR reads then keep HDF5's default."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libhdf5" in line and "_hl" not in line})
    except OSError:
        return None
    probe = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            set_block, set_attempts = lib.H5Pset_meta_block_size, lib.H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        set_block.argtypes, set_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint64], [ctypes.c_int64, ctypes.c_uint]
        # Another copy of HDF5 would read the id as one of its own: prove it is h5py's copy first.
        if set_block(probe.id, 4099) >= 0 and probe.get_meta_block_size() == 4099:
            return set_attempts
    return None


def _validate(path: Path, f: h5py.File) -> Layout:
    try:
        return validate(f)
    except Problem as exc:
        raise RunFileError(f"{path}: {exc}") from None
    except _READ_ERRORS as exc:
        raise RunFileError(f"{path}: damaged run file ({short_error(exc)})") from exc
    except MemoryError as exc:
        raise _out_of_memory(path, "check it", exc) from None


def _out_of_memory(path: Path, doing: str, exc: MemoryError) -> RunFileError:
    """The last resort for a file too large for this machine: validation already refuses the
    extents no file of its size can hold, so this file may well be intact. Raised ``from None``
    so that no traceback keeps the failed read's frames, and the arrays they hold, alive."""
    return RunFileError(f"{path}: not enough memory to {doing} ({short_error(exc)})")


def _refuse_shard(path: Path, metadata: dict[str, Any]) -> None:
    if not metadata.get("sharded"):
        return
    rank, world = metadata.get("rank", "?"), metadata.get("world_size", "?")
    from gfprobe.store.merge import merged_name  # merge imports this module

    whole = merged_name(path)
    raise RunFileError(
        f"{path}: rank {rank} of {world} of a sharded (FSDP/DTensor) run holds only that rank's shard of "
        f"each gradient; merge the ranks first: gfprobe merge {whole.with_name(whole.stem)}.rank*{whole.suffix} "
        f"--out {whole}"
    )


@dataclass(frozen=True)
class Unreadable:
    """A run file that could not be read, and why."""

    path: str
    error: str  # the problem, without the path

    @classmethod
    def of(cls, path: str | Path, exc: RunFileError) -> Unreadable:
        return cls(str(path), str(exc).removeprefix(f"{path}: "))

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}


def read_each(paths: Iterable[Path], read: Callable[[Path], T],
              on_file: Callable[[int], None] | None = None) -> tuple[list[T], list[Unreadable]]:
    """``read`` every file; one that cannot be read is listed, and the others are still read.

    A study with a crashed or half-copied run is normal: its other runs are worth a report.
    ``on_file(n)`` is called after each file (n files done so far).
    """
    values: list[T] = []
    unreadable: list[Unreadable] = []
    for done, path in enumerate(paths, start=1):
        try:
            values.append(read(path))
        except RunFileError as exc:
            unreadable.append(Unreadable.of(path, exc))
        if on_file is not None:
            on_file(done)
    return values, unreadable
