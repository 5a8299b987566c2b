"""The run-file store: whole compressed chunks plus an uncompressed tail, read back exactly while
the run writes, after a kill, and after a clean close."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from gfprobe.store import schema
from gfprobe.store.reader import open_run
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

PARAMS = [ParamInfo(f"layer{i}.weight", (8, 8), "weight", "Linear") for i in range(10)]
FIELDS = len(schema.STAT_FIELDS)


def block(stream: int, first: int, n: int, n_params: int = len(PARAMS)) -> StepBlock:
    """Rows whose every statistic encodes (stream, step, param, field), so any misplaced cell shows."""
    steps = np.arange(first, first + n)
    stats = (stream * 1e6 + steps[:, None, None] * 1e3 + np.arange(n_params)[None, None, :]
             + np.arange(FIELDS)[None, :, None] * 0.01)
    return StepBlock(stream, steps, steps * 0.5, np.zeros(n, dtype=np.uint8), stats)


def write_run(path: Path, steps: int, rows_per_flush: int, close: bool = True) -> RunWriter:
    writer = RunWriter(path, {"command": ["test"]}, {"seed": 1})
    writer.add_stream("SGD", PARAMS)
    for first in range(0, steps, rows_per_flush):
        writer.append_steps(block(0, first, min(rows_per_flush, steps - first)))
        writer.append_metrics([("loss", first, 0.0, 1.0 / (first + 1))])
        writer.flush()
    if close:
        writer.close("complete", {})
    return writer


def assert_reads_back(path: Path, steps: int, metric_steps: range) -> None:
    with open_run(path) as run:
        data = run.stream(0)
        loss = run.metrics()["loss"]
    expected = block(0, 0, steps)
    assert data.steps.tolist() == list(range(steps))
    for index, field in enumerate(schema.STAT_FIELDS):
        np.testing.assert_array_equal(data.stats[field], expected.stats[:, index, :].astype(schema.stat_dtype(field)))
    assert loss.steps.tolist() == list(metric_steps)
    np.testing.assert_allclose(loss.values, [1.0 / (s + 1) for s in metric_steps])


def test_bug_frequent_flushes_do_not_leak_file_space(tmp_path: Path) -> None:
    """Regression: every flush rewrote the partly filled compressed chunks, and SWMR never
    reuses the old space, so a run flushing every 2 steps grew ~70x faster than one flushing
    every 256 (28 KB against 0.4 KB per step, 10 parameters)."""
    steps = 1024
    batched, frequent = tmp_path / "batched.h5", tmp_path / "frequent.h5"
    write_run(batched, steps, rows_per_flush=schema.ROW_CHUNK)
    write_run(frequent, steps, rows_per_flush=2)
    # The tail's uncompressed slots are the only extra: one ROW_CHUNK of rows, every column.
    cells = -(-len(PARAMS) // schema.COL_CHUNK) * schema.COL_CHUNK
    tail_bytes = schema.ROW_CHUNK * (FIELDS * cells + len(schema.STEP_COLUMNS) + len(schema.METRIC_COLUMNS) + 2) * 8
    assert frequent.stat().st_size < batched.stat().st_size + tail_bytes + 64 * 1024
    assert_reads_back(frequent, steps, range(0, steps, 2))
    assert_reads_back(batched, steps, range(0, steps, schema.ROW_CHUNK))


@pytest.mark.parametrize("steps", [1, schema.ROW_CHUNK - 1, schema.ROW_CHUNK, schema.ROW_CHUNK + 5,
                                   3 * schema.ROW_CHUNK + 17])
def test_a_killed_run_reads_back_every_flushed_row(tmp_path: Path, steps: int) -> None:
    path = tmp_path / "killed.h5"
    writer = write_run(path, steps, rows_per_flush=7, close=False)
    writer._file.close()  # the process dies: no final flush, no status, the tail stays
    with h5py.File(path, "r") as f:
        assert f.attrs["status"] == "running"
        assert f["steps/step"].shape[0] == steps // schema.ROW_CHUNK * schema.ROW_CHUNK
    assert_reads_back(path, steps, range(0, steps, 7))


def test_rows_are_readable_while_the_run_writes(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    writer = write_run(path, 10, rows_per_flush=5, close=False)
    assert_reads_back(path, 10, range(0, 10, 5))  # all in the tail
    total = schema.ROW_CHUNK + 30
    for first in range(10, total, 10):
        writer.append_steps(block(0, first, min(10, total - first)))
    writer.flush()
    assert_reads_back(path, total, range(0, 10, 5))  # a whole chunk, the rest in the tail
    writer.close("complete", {})
    with h5py.File(path, "r") as f:
        assert (f[schema.TAIL_GROUP][schema.RECORDS_TAIL_ROW][:] == -1).all()  # no row left in the tail
        assert f["steps/step"].shape[0] == total
    assert_reads_back(path, total, range(0, 10, 5))


# A writer in a process of its own, as `gfprobe record` is to a reader: HDF5 shares one open
# file's state between the handles of one process, which would hide what a reader sees.
LIVE_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_store import block, PARAMS
from gfprobe.store.writer import RunWriter
writer = RunWriter(Path(sys.argv[1]), {"command": ["test"]}, {})
writer.add_stream("SGD", PARAMS)
writer.flush()
print("ready", flush=True)
first = 0
for line in sys.stdin:
    writer.append_steps(block(0, first, int(line)))
    first += int(line)
    writer.flush()
    print(first, flush=True)
writer.close("complete", {})
"""


def test_a_reader_opened_before_rows_arrive_reads_them_right(tmp_path: Path) -> None:
    """Regression: a run opened (and so validated) before the writer flushed its rows read those rows
    as all zeros: their row index was read fresh, the cells through metadata from before the flush.
    Rows in the tail, more of them, and rows moved into a whole chunk meanwhile."""
    path = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(path), str(Path(__file__).parent)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline().strip() == "ready"
        for rows in (9, 5, schema.ROW_CHUNK + 3):
            with open_run(path) as run:
                writer.stdin.write(f"{rows}\n")
                writer.stdin.flush()
                total = int(writer.stdout.readline())
                data = run.stream(0)
            assert data.steps.tolist() == list(range(total))
            expected = block(0, 0, total).stats
            for index, field in enumerate(schema.STAT_FIELDS):
                np.testing.assert_array_equal(data.stats[field], expected[:, index, :].astype(schema.stat_dtype(field)))
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0


def test_stale_tail_slots_are_ignored(tmp_path: Path) -> None:
    """Slots whose row index does not continue the compressed rows (a flush cut short by a
    kill, or rows since moved into a whole chunk) are not read."""
    path = tmp_path / "stale.h5"
    writer = write_run(path, schema.ROW_CHUNK + 6, rows_per_flush=6, close=False)
    writer._file.close()
    with h5py.File(path, "r+") as f:
        row = f[f"{schema.TAIL_GROUP}/{schema.RECORDS_TAIL_ROW}"]
        assert row[:7].tolist() == [schema.ROW_CHUNK + i for i in range(6)] + [-1]
        row[3] = 2  # as if slot 3 still held a row from before the last whole chunk
    with open_run(path) as run:
        assert run.stream(0).steps.tolist() == list(range(schema.ROW_CHUNK + 3))


def test_a_second_stream_added_while_rows_are_pending(tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    writer = RunWriter(path, {}, {})
    writer.add_stream("Adam", PARAMS[:4])
    writer.append_steps(block(0, 0, 3, n_params=4))
    writer.flush()
    writer.append_steps(block(0, 3, 2, n_params=4))  # pending when the columns widen
    writer.add_stream("SGD", PARAMS[4:])
    writer.append_steps(block(1, 0, 2, n_params=6))
    writer.close("complete", {})
    with open_run(path) as run:
        first, second = run.stream(0), run.stream(1)
        with h5py.File(path, "r") as f:
            assert np.isnan(f["stats/sumsq"][0, 4:]).all()  # another stream's cells: fill
            assert (f["stats/active"][0, 4:] == -1).all()
    assert first.steps.tolist() == [0, 1, 2, 3, 4] and second.steps.tolist() == [0, 1]
    np.testing.assert_array_equal(first.stats["sumsq"], block(0, 0, 5, 4).stats[:, 0, :])
    np.testing.assert_array_equal(second.stats["sum_abs"], block(1, 0, 2, 6).stats[:, 1, :])


def test_the_documented_h5py_and_pandas_recipe_reads_a_killed_run(tmp_path: Path) -> None:
    """docs/run-file.md shows users how to read a run without gfprobe; it must stay true."""
    steps = schema.ROW_CHUNK + 9
    path = tmp_path / "killed.h5"
    writer = write_run(path, steps, rows_per_flush=3, close=False)
    writer._file.close()
    doc = (Path(__file__).parent.parent / "docs" / "run-file.md").read_text()
    code = doc.split("## Reading it without gfprobe", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {}
    exec(code.replace('"run.h5"', repr(str(path))), scope)
    l2, metrics = scope["l2"], scope["metrics"]
    expected = np.sqrt(block(0, 0, steps).stats[:, schema.STAT_FIELDS.index("masked_sumsq"), :])
    np.testing.assert_allclose(l2.to_numpy(), expected)  # type: ignore[attr-defined]
    assert list(l2.index) == list(range(steps))  # type: ignore[attr-defined]
    assert list(l2.columns) == [p.name for p in PARAMS]  # type: ignore[attr-defined]
    assert metrics["step"].tolist() == list(range(0, steps, 3))  # type: ignore[index]
