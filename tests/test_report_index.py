"""The study index (issue 11): a report that takes its runs' summaries from the folder's index
prints exactly what a report that reads every file prints; a file changed after it was indexed
is read again; a damaged, foreign or hostile index is ignored and rebuilt; a folder that cannot
be written, and a run still being written, are never a problem."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIXTURES

from gfprobe.analysis import index, index_codec, trend
from gfprobe.analysis.index import INDEX_FROM, INDEX_NAME, StudyIndex, file_key, options_key, summarise_for_index
from gfprobe.analysis.report import RunSummary, read_report
from gfprobe.cli import main
from gfprobe.render import formats
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

F = {name: i for i, name in enumerate(STAT_FIELDS)}
PARAMS = [ParamInfo("fc1.weight", (8, 4), "weight", "Linear", "explicit"),
          ParamInfo("fc1.bias", (8,), "bias", "Linear"),
          ParamInfo("fc2.weight", (2, 8), "weight", "Linear", "explicit")]
RUNS = INDEX_FROM + 8  # enough for a report to write an index of its own
STEPS = 40  # more than a sparkline's 16 bars: the index keeps the trend, not every step
ARGS = [[], ["--correlate", "test_acc", "--scsdc", "--runs"], ["--summary", "max"], ["--per-layer"]]


def write_run(path: Path, seed: int, acc: float | None = None, close: bool = True) -> RunWriter:
    """A small run whose norms drift over training (so its sparkline has shape), with attributes
    that pair it into SC-SDC configurations."""
    rng = np.random.default_rng(seed)
    sparse = seed % 2 == 0
    attrs = {"optimizer": ("sgd", "adam")[seed // 2 % 2], "regularisation": "NR", "sparse": sparse,
             "density": 0.5 if sparse else 1.0, "pair_density": 0.5, "seed": seed // 4, "note": "x\u202ey"}
    block = np.zeros((STEPS, len(STAT_FIELDS), len(PARAMS)))
    trend_ = np.exp(rng.normal(size=STEPS).cumsum() * 0.3)
    for col in range(len(PARAMS)):
        sumsq = trend_ * rng.uniform(0.5, 2.0, STEPS)
        block[:, F["sumsq"], col] = block[:, F["masked_sumsq"], col] = sumsq
        block[:, F["sum_abs"], col] = block[:, F["masked_sum_abs"], col] = np.sqrt(sumsq) * 3
        block[:, F["max_abs"], col] = block[:, F["masked_max_abs"], col] = np.sqrt(sumsq)
    block[:, F["active"]] = [p.numel for p in PARAMS]
    block[:, F["has_grad"]] = 1
    writer = RunWriter(path, {"command": ["test"]}, attrs)
    writer.add_stream("SGD", PARAMS)
    writer.append_steps(StepBlock(0, np.arange(STEPS), np.arange(STEPS) * 0.1, np.zeros(STEPS, np.uint8), block))
    value = float(rng.uniform(0.5, 0.9)) if acc is None else acc
    writer.append_metrics([("test_acc", STEPS, 1.0, value), ("test_loss", STEPS, 1.0, 2 - value)])
    writer.flush()
    if close:
        writer.close("complete", {})
    return writer


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pristine")
    for seed in range(RUNS):
        write_run(folder / f"run-{seed:03d}.h5", seed)
    return folder


@pytest.fixture
def study(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the pristine study: no index yet."""
    return Path(shutil.copytree(pristine, tmp_path / "study"))


def report(folder: Path, *args: str, output: str = "table") -> tuple[str, str, int]:
    result = CliRunner(env={"NO_COLOR": "1", "GFPROBE_WIDTH": "200"}).invoke(
        main, ["report", str(folder), "--format", output, *args])
    assert "Traceback" not in result.output + result.stderr
    return result.stdout, result.stderr, result.exit_code


def outputs(folder: Path) -> list[tuple[str, str, int]]:
    return [report(folder, *args, output=output) for args in ARGS for output in ("table", "json", "csv")]


def quick(folder: Path) -> list[tuple[str, str, int]]:
    """Every section, as JSON (every number) and as a table (the sparkline)."""
    return [report(folder, *ARGS[1], output="json"), report(folder, *ARGS[1])]


def index_entries(folder: Path) -> int:
    return len(StudyIndex.open(folder))


def make_index(folder: Path) -> None:
    """Index every run of ``folder`` through the API the study runner uses."""
    study_index = StudyIndex.open(folder)
    for path in sorted(folder.glob("*.h5")):
        assert study_index.put(summarise_for_index(path))
    assert study_index.save() is None


def rewrite(folder: Path, change: Callable[[dict[str, Any], list[list[Any]]], None]) -> None:
    """Change the index file's header and entries, then give it a correct checksum again: what
    the index's own checks cannot tell from one gfprobe wrote."""
    path = folder / INDEX_NAME
    head, *lines = path.read_text().splitlines()
    header, entries = json.loads(head), [json.loads(line) for line in lines]
    change(header, entries)
    write_index(path, header, "".join(json.dumps(entry) + "\n" for entry in entries))


def write_index(path: Path, header: dict[str, Any], body: str) -> None:
    header["sha256"] = hashlib.sha256(body.encode()).hexdigest()
    path.write_bytes(json.dumps(header).encode() + b"\n" + body.encode())


def rewrite_text(change: Callable[[str], str]) -> Callable[[Path], None]:
    """Change the entries' text (what JSON cannot write back), then give the file a correct checksum."""

    def damage(path: Path) -> None:
        head, _, body = path.read_text().partition("\n")
        write_index(path, json.loads(head), change(body))

    return damage


def same(a: Any, b: Any) -> bool:
    """Equal, type for type (1 is not 1.0, NaN is NaN), arrays element for element."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and bool(a == b)


def same_summaries(a: list[RunSummary], b: list[RunSummary]) -> bool:
    return len(a) == len(b) and all(same(getattr(x, f.name), getattr(y, f.name))
                                    for x, y in zip(a, b, strict=True) for f in dataclasses.fields(RunSummary))


# -- the index changes no number ----------------------------------------------------------------

def test_fixture_runs_report_the_same_with_the_index(tmp_path: Path) -> None:
    folder = Path(shutil.copytree(FIXTURES / "runs", tmp_path / "runs"))
    without = outputs(folder)
    assert not (folder / INDEX_NAME).exists()  # three runs: a report writes no index of its own
    make_index(folder)
    assert index_entries(folder) == 3
    assert outputs(folder) == without


def test_a_study_reports_the_same_with_the_index(study: Path) -> None:
    cold = outputs(study)  # reads every file, then writes the index
    assert index_entries(study) == RUNS * 2  # two option sets: the default summary and --summary max
    assert outputs(study) == cold
    assert cold[0][2] == 0 and "egf_2 trend" in cold[0][0]


def test_summaries_from_the_index_equal_those_from_the_files(study: Path) -> None:
    paths = sorted(study.glob("*.h5"))
    from_files, _ = read_report(paths)
    assert index_entries(study) == RUNS
    from_index, _ = read_report(paths)
    assert same_summaries(from_index, from_files)
    # What the sparkline is drawn from is the trend, not every step, either way.
    assert all(len(s.series["egf_2"]) == trend.WIDTH for s in from_index)


def test_the_report_takes_its_numbers_from_the_index(study: Path) -> None:
    """A valid entry is believed (which is how the report gets fast); the same entry for a file
    touched since is not."""
    make_index(study)

    def forge(header: dict[str, Any], entries: list[list[Any]]) -> None:
        entries[0][3]["metrics"]["test_acc"]["last"] = 0.125

    rewrite(study, forge)
    runs = json.loads(report(study, output="json")[0])["runs"]
    assert runs[0]["metrics"]["test_acc"]["last"] == 0.125
    first = sorted(study.glob("*.h5"))[0]
    os.utime(first)
    runs = json.loads(report(study, output="json")[0])["runs"]
    assert runs[0]["metrics"]["test_acc"]["last"] != 0.125


# -- stale entries ------------------------------------------------------------------------------

def test_a_replaced_file_is_read_again(study: Path) -> None:
    expected = quick(study)
    target = study / "run-005.h5"
    write_run(study / "new.tmp", 5, acc=0.01)
    os.replace(study / "new.tmp", target)
    runs = json.loads(report(study, output="json")[0])["runs"]
    assert next(r for r in runs if r["path"] == str(target))["metrics"]["test_acc"]["last"] == 0.01
    assert quick(study) != expected


def test_a_file_rewritten_in_place_keeping_its_size_and_time_is_read_again(study: Path) -> None:
    make_index(study)
    target = study / "run-007.h5"
    before = os.stat(target)
    with h5py.File(target, "r+") as f:
        f["metrics/value"][0] = 0.03125
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(target)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    runs = json.loads(report(study, output="json")[0])["runs"]
    assert next(r for r in runs if r["path"] == str(target))["metrics"]["test_acc"]["last"] == 0.03125


def test_other_options_are_other_entries(study: Path) -> None:
    make_index(study)
    path = study / "run-000.h5"
    assert read_report([path], how="mean")[0][0].how == "mean"  # an index exists: kept up to date
    mean = StudyIndex.open(study).get(path, options_key(how="mean"), file_key(path))
    assert mean is not None and mean.how == "mean"
    assert StudyIndex.open(study).get(path, options_key(), file_key(path)) is not None
    assert StudyIndex.open(study).get(path, options_key(stream=1), file_key(path)) is None


def test_a_running_file_is_never_indexed(study: Path) -> None:
    make_index(study)
    live = study / "live.h5"
    writer = write_run(live, 3, acc=0.25, close=False)
    try:
        assert summarise_for_index(live) is None
        summaries, unreadable = read_report(sorted(study.glob("*.h5")))
        assert not unreadable and next(s for s in summaries if s.path == str(live)).status == "running"
        assert StudyIndex.open(study).get(live, options_key(), file_key(live)) is None
    finally:
        writer.close("complete", {})
    summaries, _ = read_report(sorted(study.glob("*.h5")))
    assert next(s for s in summaries if s.path == str(live)).status == "complete"
    assert StudyIndex.open(study).get(live, options_key(), file_key(live)) is not None


# -- damaged, foreign and hostile index files ---------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _header(**changes: Any) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        rewrite(path.parent, lambda header, entries: header.update(changes))

    return damage


def _entries(change: Callable[[list[list[Any]]], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        rewrite(path.parent, lambda header, entries: change(entries))

    return damage


def _swap_names(entries: list[list[Any]]) -> None:
    entries[0][0], entries[1][0] = entries[1][0], entries[0][0]


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "random bytes": lambda path: path.write_bytes(np.random.default_rng(0).bytes(5000)),
    "empty": lambda path: path.write_bytes(b""),
    "a digit changed": lambda path: path.write_bytes(path.read_bytes().replace(b'"last": 0.', b'"last": 1.', 1)),
    "another version": _header(version=99),
    "another gfprobe": _header(gfprobe="0.0.1"),
    "fewer fields": _header(fields=["status", "steps"]),
    "an unknown field": _entries(lambda entries: entries[0][3].update(colour="red")),
    "a missing field": _entries(lambda entries: entries[0][3].pop("steps")),
    "a text for a number": _entries(lambda entries: entries[0][3]["measures"].update(egf_2="1.5")),
    "a bool for a number": _entries(lambda entries: entries[0][3].update(steps=True)),
    "an entry naming another file": _entries(_swap_names),
    "a half surrogate": _entries(lambda entries: entries[0][3]["attrs"].update(note="\ud800")),
    "deep nesting": rewrite_text(lambda body: body.replace('"attrs": {', '"attrs": {"deep": ' + "[" * 5000 + "]" * 5000
                                                           + ", ", 1)),
    "a huge number": rewrite_text(lambda body: body.replace('"steps": 40', '"steps": 1' + "0" * 5000, 1)),
    "not a list": _entries(lambda entries: entries.__setitem__(0, {"name": "run-000.h5"})),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_index_gives_the_right_report_and_is_rebuilt(study: Path, damage: str) -> None:
    expected = quick(study)
    DAMAGE[damage](study / INDEX_NAME)
    assert quick(study) == expected
    assert index_entries(study) == RUNS  # rebuilt by the report


def test_a_pipe_where_the_index_goes_is_never_read(study: Path) -> None:
    """Reading a pipe would block the report: it is not read, and is replaced by the index."""
    expected = report(study, output="json")
    (study / INDEX_NAME).unlink()
    os.mkfifo(study / INDEX_NAME)
    assert report(study, output="json") == expected
    assert index_entries(study) == RUNS


def notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines gfprobe logged (on stderr, outside pytest, which captures them)."""
    lines = [record.getMessage() for record in caplog.records]
    caplog.clear()
    return lines


def test_a_folder_where_the_index_goes(study: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The report is right; one line says that no index could be written."""
    expected = report(study, output="json")
    (study / INDEX_NAME).unlink()
    (study / INDEX_NAME).mkdir()
    notes(caplog)
    assert report(study, output="json") == expected
    (note,) = notes(caplog)
    assert note.startswith(f"gfprobe: note: no study index written in {str(study)!r}") and "Is a directory" in note


def test_hostile_strings_from_the_index_are_shown_as_data(study: Path) -> None:
    make_index(study)

    def inject(header: dict[str, Any], entries: list[list[Any]]) -> None:
        entries[0][3]["attrs"]["note"] = "\x1b[2J[bold]::error::x"
        entries[0][3]["status"] = "\x1b]0;title\x07"

    rewrite(study, inject)
    stdout, _, code = report(study)
    assert code == 0 and "\x1b" not in stdout and "\\x1b" in stdout


# -- folders that cannot be written -------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of our own (root only; skipped elsewhere): a real read-only or full disk."""
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_read_only_folder_reports_without_an_index(pristine: Path, small_disk: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    copy = Path(shutil.copytree(pristine, small_disk.parent / "copy"))
    expected = report(copy, output="json")[0].replace(str(copy), "F")
    folder = Path(shutil.copytree(pristine, small_disk / "runs"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for _ in range(2):
        notes(caplog)
        stdout, _, code = report(folder, output="json")
        assert (stdout.replace(str(folder), "F"), code) == (expected, 0)
        (note,) = notes(caplog)
        assert "no study index written" in note and "Read-only file system" in note


def test_a_full_disk_reports_without_an_index(pristine: Path, small_disk: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    folder = Path(shutil.copytree(pristine, small_disk / "runs"))
    expected = report(folder, output="json")
    (folder / INDEX_NAME).unlink()
    with (small_disk / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    notes(caplog)
    assert report(folder, output="json") == expected
    (note,) = notes(caplog)
    assert "no study index written" in note and "No space left on device" in note
    assert not list(folder.glob(f"{INDEX_NAME}*"))  # no temporary file left behind
    (small_disk / "filler").unlink()
    assert report(folder, output="json") == expected
    assert not notes(caplog) and index_entries(folder) == RUNS


# -- the API the study runner calls -------------------------------------------------------------

def test_the_runner_api(study: Path) -> None:
    first, second = study / "run-000.h5", study / "run-001.h5"
    entry = summarise_for_index(first)
    assert entry is not None and entry.name == "run-000.h5"
    study_index = StudyIndex.open(study)
    assert len(study_index) == 0 and study_index.put(entry) and not study_index.put(None)
    stale = summarise_for_index(second)
    os.utime(second, ns=(0, 0))  # changed after it was summarised: not taken
    assert stale is not None and not study_index.put(stale)
    assert not study_index.put(dataclasses.replace(entry, name="run-002.h5"))  # another file
    assert study_index.save() is None and study_index.save() is None
    reopened = StudyIndex.open(study)
    assert len(reopened) == 1
    stored = reopened.get(first, options_key(), file_key(first))
    assert stored is not None and same_summaries([stored], read_report([first])[0])
    assert not list(study.glob(f"{INDEX_NAME}.*"))  # no temporary file left behind


def test_a_deleted_run_leaves_the_index(study: Path) -> None:
    """When the index is next written, that is: an entry for a file that is gone is never used
    (a new file of that name is another file), so it need not be removed at once."""
    make_index(study)
    gone = study / "run-003.h5"
    key = file_key(gone)
    gone.unlink()
    write_run(study / "run-new.h5", 99)
    report(study, output="json")
    assert index_entries(study) == RUNS  # the new run's entry came, the deleted run's went
    assert StudyIndex.open(study).get(gone, options_key(), key) is None


def test_every_runsummary_field_can_be_indexed(study: Path) -> None:
    """RunSummary grows fields: each must round-trip through the index's JSON, or the index
    would leave every run out."""
    path = study / "run-000.h5"
    (summary,), _ = read_report([path])
    assert set(index_codec.stored_fields()) == {f.name for f in dataclasses.fields(RunSummary)} - {"path", "per_layer"}
    stored = json.loads(json.dumps(index_codec.encode(summary)))
    assert same_summaries([index_codec.decode(stored, str(path))], [summary])


def test_the_index_is_json_lines_with_a_checksum(study: Path) -> None:
    make_index(study)
    head, _, body = (study / INDEX_NAME).read_bytes().partition(b"\n")
    header = json.loads(head)
    assert header["format"] == index.FORMAT and header["entries"] == RUNS
    assert header["sha256"] == hashlib.sha256(body).hexdigest()
    assert all(json.loads(line)[0].endswith(".h5") for line in body.splitlines())


# -- the sparkline's trend ----------------------------------------------------------------------

def test_the_trend_draws_the_same_sparkline() -> None:
    assert len(formats._BARS) == trend.LEVELS
    rng = np.random.default_rng(5)
    for i in range(3000):
        n = int(rng.integers(0, 300))
        values = [rng.lognormal(0, 3, n), np.exp(rng.normal(size=n).cumsum() * 0.1), rng.normal(size=n),
                  np.full(n, 0.3) * (1 + 1e-13 * rng.normal(size=n))][i % 4].astype(np.float32)
        values[rng.random(n) < 0.05] = np.nan
        compressed = trend.compress(values)
        assert formats.sparkline(compressed) == formats.sparkline(values)
        assert compressed.dtype == np.float64 and (len(compressed) <= trend.WIDTH or len(compressed) == n)
