"""One consistent view of a row table (store/table.py) in a file that may be being written.

A SWMR reader keeps every dataset's metadata (its shape, where its chunks are) from when it first
touched that dataset, until it refreshes it. Opening a run validates it, which touches every
dataset before any row is read; rows the writer flushes afterwards then have their row index
(read fresh) but cells whose chunks the reader's old metadata does not know yet, and those read
as the fill value: a live reader was seen taking the newest rows as all zeros (reproduced in
tests/test_store.py). So a live table is read in the writer's order, each dataset refreshed first:
the compressed columns' length, the tail's row index, the tail's cells, and the row index once
more, keeping only the slots whose index did not change meanwhile (the writer marks a slot unused
before it refills it). A reader that races the writer sees fewer rows, never wrong ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from gfprobe.store import schema

# Reads of a table that raced the writer (a block of rows moved to the compressed datasets
# meanwhile) are redone this many times before the rows in question are left out of this read.
ATTEMPTS = 4


@dataclass(frozen=True)
class TableView:
    """The compressed rows' count and the tail rows that continue them, read together."""

    n_main: int
    tail: dict[str, np.ndarray]  # column path -> its tail rows (every cell of a wide column)
    n_tail: int

    @property
    def rows(self) -> int:
        return self.n_main + self.n_tail

    def column(self, f: h5py.File, path: str, cells: slice = slice(None)) -> np.ndarray:
        """Every row of one column (cells ``cells`` of a wide one): compressed rows, then the tail's."""
        main = f[path]
        first = main[: self.n_main, cells] if main.ndim == 2 else main[: self.n_main]
        if not self.n_tail:
            return np.asarray(first)
        rest = self.tail[path]
        return np.concatenate([first, rest[:, cells] if rest.ndim == 2 else rest])


def read_table(f: h5py.File, paths: Sequence[str], row_path: str) -> TableView:
    """A consistent view of the table whose columns include ``paths`` (tail row index ``row_path``)."""
    tail = f.get(schema.TAIL_GROUP)
    live = f.swmr_mode
    view = TableView(0, {}, 0)
    for _ in range(ATTEMPTS if live else 1):
        view, settled = _read_once(f, tail, paths, row_path, live)
        if settled:
            break
    return view


def _read_once(f: h5py.File, tail: h5py.Group | None, paths: Sequence[str], row_path: str,
               live: bool) -> tuple[TableView, bool]:
    """One try: the view, and whether it raced nothing (else the caller tries again)."""
    # A SWMR reader may see one column extended before its neighbours: trust the shortest.
    n_main = min(_fresh(f[path], live).shape[0] for path in paths)
    if tail is None or row_path not in tail:
        return TableView(n_main, {}, 0), True
    index = _fresh(tail[row_path], live)[:]
    continues = index == n_main + np.arange(len(index))
    n_tail = len(index) if continues.all() else int(np.argmin(continues))
    n_tail = min([n_tail, *(tail[path].shape[0] for path in paths)])
    # Slots in use that do not continue the compressed rows: the writer is moving rows now.
    settled = n_tail == int((index >= 0).sum())
    if not n_tail:
        return TableView(n_main, {}, 0), settled
    cells = {path: np.asarray(_fresh(tail[path], live)[:n_tail]) for path in paths}
    if live:
        again = _fresh(tail[row_path], live)[:n_tail]
        unchanged = again == index[:n_tail]
        if not unchanged.all():
            n_tail = int(np.argmin(unchanged))
            cells = {path: rows[:n_tail] for path, rows in cells.items()}
            settled = False
    return TableView(n_main, cells, n_tail), settled


def _fresh(ds: h5py.Dataset, live: bool) -> h5py.Dataset:
    """``ds`` with its metadata and cached chunks reloaded from the file when it is being written."""
    if live:
        ds.refresh()
    return ds
