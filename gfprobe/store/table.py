"""Row-growing tables in a SWMR file: whole compressed chunks, plus an uncompressed tail.

HDF5 never reuses file space in SWMR mode, and a compressed chunk that is written again
(because a flush wrote it half full and more rows arrived) moves to new space: the old copy
leaks. Flushing every few seconds, as a crash-safe recorder must, then multiplied file sizes
(measured: 28 KB per recorded step, against 0.4 KB, when each flush held two steps).

So a table's compressed datasets are only ever written in whole chunks of ``ROW_CHUNK`` rows,
each chunk once. The rows after the last whole chunk go to the same columns under ``/tail``,
uncompressed, in a fixed number of row slots that are overwritten in place. The tail's ``row``
column holds each slot's absolute row index (-1 when unused): a reader takes tail slots only
where they continue the compressed rows, so a reader that catches the writer between the two
steps of a flush sees fewer rows, never wrong ones. Closing writes the last partial chunk once
and marks every tail slot unused; the tail stays in the file (deleting it would need a plain
read-write open, which a kill can leave unreadable: see writer.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import h5py
import numpy as np

from gfprobe.store import schema


@dataclass(frozen=True)
class Column:
    """One column of a table: a dataset path below the table's groups, its type and fill."""

    path: str  # e.g. "steps/step" or "stats/sumsq"
    dtype: np.dtype[np.generic]
    fill: float | int = 0
    wide: bool = False  # 2-D: one column of cells per parameter


def create_table(f: h5py.File, columns: list[Column], row_path: str) -> None:
    """Create the compressed datasets and their uncompressed tail (before SWMR starts).

    The tail mirrors the columns' paths under ``/tail``; ``row_path`` names its row-index column.
    """
    tail = f.require_group(schema.TAIL_GROUP)
    tail.create_dataset(row_path, data=np.full(schema.ROW_CHUNK, -1, dtype=np.int64),
                        chunks=(schema.TAIL_ROW_CHUNK,))
    for col in columns:
        shape, maxshape = ((0, 0), (None, None)) if col.wide else ((0,), (None,))
        chunks = (schema.ROW_CHUNK, schema.COL_CHUNK) if col.wide else (schema.ROW_CHUNK,)
        f.create_dataset(col.path, shape=shape, maxshape=maxshape, dtype=col.dtype, chunks=chunks,
                         fillvalue=col.fill, **schema.COMPRESSION)
        tail_shape = (schema.ROW_CHUNK, 0) if col.wide else (schema.ROW_CHUNK,)
        tail_chunks = (schema.TAIL_ROW_CHUNK, schema.COL_CHUNK) if col.wide else (schema.TAIL_ROW_CHUNK,)
        tail.create_dataset(col.path, shape=tail_shape,
                            maxshape=(schema.ROW_CHUNK, None) if col.wide else (schema.ROW_CHUNK,),
                            dtype=col.dtype, chunks=tail_chunks, fillvalue=col.fill)


class GrowingTable:
    """Appends rows to a table made by :func:`create_table`. One thread owns it."""

    def __init__(self, f: h5py.File, columns: list[Column], row_path: str) -> None:
        self._columns = columns
        self._main = {c.path: f[c.path] for c in columns}
        tail = f[schema.TAIL_GROUP]
        self._tail = {c.path: tail[c.path] for c in columns}
        self._tail_row = tail[row_path]
        self._width = 0  # cells per row of the wide columns
        self._n_main = 0  # rows in the compressed datasets: a multiple of ROW_CHUNK until close
        self._pending: dict[str, list[np.ndarray]] = {c.path: [] for c in columns}
        self._n_pending = 0
        self._tail_written = 0  # pending rows already in the tail's slots
        self._tail_used = 0  # slots holding a valid row in the file

    @property
    def rows(self) -> int:
        return self._n_main + self._n_pending

    @property
    def pending_bytes(self) -> int:
        """Uncompressed size of the rows not yet in the file: what the next flush writes, at most."""
        return sum(block.nbytes for blocks in self._pending.values() for block in blocks)

    def drop_unflushed(self) -> None:
        """Forget the rows no flush has written yet; rows already in the tail stay readable there."""
        if self._tail_written < self._n_pending:
            self._pending = {path: [np.concatenate(blocks)[: self._tail_written]] if blocks else []
                             for path, blocks in self._pending.items()}
            self._n_pending = self._tail_written

    def widen(self, width: int) -> None:
        """Give the wide columns ``width`` cells per row; new cells hold the column's fill."""
        if width <= self._width:
            return
        for col in self._columns:
            if not col.wide:
                continue
            self._main[col.path].resize((self._n_main, width))
            self._tail[col.path].resize((schema.ROW_CHUNK, width))
            self._pending[col.path] = [_pad(block, width, col.fill) for block in self._pending[col.path]]
        self._width = width
        self._tail_written = 0  # the new cells of pending rows are not in the tail yet

    def append(self, values: Mapping[str, np.ndarray], first_cell: int = 0) -> None:
        """Queue rows. Wide values cover cells ``first_cell:first_cell + k``; the rest get fill."""
        n = len(next(iter(values.values())))
        for col in self._columns:
            data = np.asarray(values[col.path], dtype=col.dtype)
            if col.wide:
                full = np.full((n, self._width), col.fill, dtype=col.dtype)
                full[:, first_cell:first_cell + data.shape[1]] = data
                data = full
            self._pending[col.path].append(data)
        self._n_pending += n

    def flush(self, final: bool = False) -> None:
        """Write whole chunks to the compressed datasets and the rest to the tail; ``final``:
        write everything to the compressed datasets (the last chunk may be partial)."""
        if not self._n_pending:
            if final:
                self._clear_tail()
            return
        pending = {path: np.concatenate(blocks) for path, blocks in self._pending.items()}
        whole = self._n_pending if final else self._n_pending // schema.ROW_CHUNK * schema.ROW_CHUNK
        if whole:
            self._write_main({path: data[:whole] for path, data in pending.items()})
            pending = {path: data[whole:] for path, data in pending.items()}
            self._n_pending -= whole
            self._tail_written = 0
        self._pending = {path: [data] if len(data) else [] for path, data in pending.items()}
        if final:
            self._clear_tail()
        else:
            self._write_tail(pending)

    def _clear_tail(self) -> None:
        """Mark every tail slot unused: a closed file keeps all its rows in the compressed datasets."""
        if self._tail_used:
            self._tail_row[: self._tail_used] = -1
        self._tail_written = self._tail_used = 0

    def _write_main(self, rows: Mapping[str, np.ndarray]) -> None:
        start = self._n_main
        stop = start + len(next(iter(rows.values())))
        for col in self._columns:
            ds = self._main[col.path]
            ds.resize((stop, self._width) if col.wide else (stop,))
            ds[start:stop] = rows[col.path]
            ds.flush()  # before the tail gives these rows up (see _write_tail)
        self._n_main = stop

    def _write_tail(self, pending: Mapping[str, np.ndarray]) -> None:
        """Fill tail slots, in the order a reader can follow: a slot about to be refilled is marked
        unused first, its new cells reach the file, and only then its row index. HDF5 writes the
        dirty chunks of different datasets in no set order, so each step is flushed. A reader
        must also read in this order, each dataset refreshed: see store/snapshot.py."""
        start, stop = self._tail_written, self._n_pending
        if stop > start:
            if self._tail_used > start:  # slots that still name rows now in the compressed datasets
                self._tail_row[start:self._tail_used] = -1
                self._tail_row.flush()
            for col in self._columns:
                self._tail[col.path][start:stop] = pending[col.path][start:stop]
                self._tail[col.path].flush()
            self._tail_row[start:stop] = np.arange(self._n_main + start, self._n_main + stop)
        if self._tail_used > stop:  # slots that held rows now in the compressed datasets
            self._tail_row[stop:self._tail_used] = -1
        self._tail_written = self._tail_used = stop


def _pad(block: np.ndarray, width: int, fill: float | int) -> np.ndarray:
    out = np.full((block.shape[0], width), fill, dtype=block.dtype)
    out[:, : block.shape[1]] = block
    return out
