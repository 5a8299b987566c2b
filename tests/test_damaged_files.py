"""Damaged run files: every reader gives one line that names the file and the problem, never a
traceback or a hang, whatever the damage; a folder with bad files still reports every good run.

The damage is random (hypothesis), applied to a real recorded run and to the file a killed
writer leaves (rows still in its tail, marked open for write). ``GFPROBE_DAMAGE_EXAMPLES=N``
tries N damaged files instead of 12, for a longer sweep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfprobe.cli import main
from gfprobe.errors import RunFileError
from gfprobe.store import schema
from gfprobe.store.reader import open_run
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

EXAMPLES = int(os.environ.get("GFPROBE_DAMAGE_EXAMPLES", "12"))
EXIT_CODES = {0, 2}
CHECK_EXIT_CODES = {0, 1, 2}  # 1: a rule fails, which a damaged but readable file may well do

DATASETS = ([f"params/{c}" for c in schema.PARAM_COLUMNS] + ["streams/optimizer", "streams/attrs", "metrics/names"]
            + [f"steps/{c}" for c in (*schema.STEP_COLUMNS, *schema.COST_COLUMNS)]
            + [f"stats/{f}" for f in schema.STAT_FIELDS]
            + [f"metrics/{c}" for c in schema.METRIC_COLUMNS])
TAIL = [f"{schema.TAIL_GROUP}/{p}" for p in (schema.RECORDS_TAIL_ROW, schema.METRICS_TAIL_ROW, "steps/step",
                                              "steps/stream", "steps/hook_time", "stats/sumsq", "stats/active",
                                              "metrics/value")]
GROUPS = ["params", "streams", "steps", "stats", "metrics", "attrs", schema.TAIL_GROUP, f"{schema.TAIL_GROUP}/stats"]
ATTR_NAMES = ["format", "schema_version", "status", "sharded", "rank", "world_size", "command", "lr", "sparse"]
DEEP_JSON = ["[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000, "[" * 900 + "]" * 900,
             "[NaN, Infinity, 1e999]", '["\\ud800"]', "{not json", '{"k": [1, 2, {"n": null}]}']

# -- the base files -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def wide_plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as the paths in them, without colour: what the tests look for is whole."""
    monkeypatch.setenv("GFPROBE_WIDTH", "400")
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture(scope="session")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real recorded run (with a metric and ``--attr lr=NaN``) and a killed writer's file, each
    also as rank 0 of 1 of a sharded run (what ``gfprobe merge`` reads)."""
    folder = tmp_path_factory.mktemp("bases")
    recorded = folder / "recorded.h5"
    done = record(recorded, "train_mlp.py", "--steps", "12", "--print-metric",
                  options=["--metric", r"train_loss=train_loss=([0-9.]+)", "--attr", "lr=NaN", "--attr", "seed=1"])
    assert done.returncode == 0, done.stderr
    killed = folder / "killed.h5"
    write_killed(killed)
    out = {"recorded": recorded, "killed": killed}
    for name, path in list(out.items()):
        rank = folder / f"{name}.rank0.h5"
        shutil.copyfile(path, rank)
        with h5py.File(rank, "r+") as f:
            f.attrs.update({"sharded": True, "rank": 0, "world_size": 1})
        out[f"{name}-rank"] = rank
    return out


def write_killed(path: Path, steps: int = 20) -> None:
    """Two optimizers, rows still in the tail, status 'running': what a killed process leaves
    (but for HDF5's open-for-write mark: see :func:`mark_open_for_write`)."""
    params = [ParamInfo(f"layer{i}.weight", (4, 4), "weight", "Linear") for i in range(3)]
    writer = RunWriter(path, {"command": ["test"]}, {"seed": 1})
    for stream, owned in enumerate((params[:2], params[2:])):
        writer.add_stream("SGD", owned)
        stats = np.abs(np.random.default_rng(stream).normal(size=(steps, len(schema.STAT_FIELDS), len(owned))))
        writer.append_steps(StepBlock(stream, np.arange(steps), np.arange(steps) * 0.1,
                                      np.zeros(steps, np.uint8), stats))
    writer.append_metrics([("loss", s, s * 0.1, 1.0 / (s + 1)) for s in range(steps)])
    writer.flush()
    writer._file.close()  # the process dies here: no final flush, no status
    writer._lock.release()


# -- random damage ------------------------------------------------------------------------------

DTYPES = [np.dtype("i1"), np.dtype("i8"), np.dtype("u1"), np.dtype("f4"), np.dtype("f8"), np.dtype("S3"),
          np.dtype(bool), np.dtype("c16"), np.dtype([("a", "i4"), ("b", "f8")]), h5py.string_dtype()]
attr_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.none(),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12),
    st.binary(max_size=12),  # mostly not UTF-8
    st.binary(max_size=12).map(np.bytes_),  # fixed-length: may hold NUL bytes, which text cannot
    st.sampled_from(DEEP_JSON),
    st.lists(st.floats(), max_size=4).map(np.array),
    st.lists(st.integers(-5, 5), min_size=1, max_size=6).map(lambda v: np.array(v).reshape(-1, 1)),
    st.lists(st.binary(max_size=4), min_size=1, max_size=3).map(lambda v: np.array(v, dtype="S4")),
)
# Ways to make a group or dataset read another file: a FIFO, which blocks a reader that opens it.
REDIRECTS = ("external-link", "soft-link", "external-storage", "virtual")
HUGE_ROWS = [3 * 10**8, 2**40]  # far more rows than the file holds: every one reads as fill
damage = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(DATASETS + TAIL + GROUPS)),
    st.tuples(st.just("retype"), st.sampled_from(DATASETS + TAIL), st.sampled_from(range(len(DTYPES)))),
    st.tuples(st.just("reshape"), st.sampled_from(DATASETS + TAIL), st.lists(st.integers(0, 40), max_size=3)),
    st.tuples(st.just("regroup"), st.sampled_from(DATASETS + TAIL + GROUPS)),
    st.tuples(st.just("attr"), st.sampled_from(["/", "attrs"]), st.sampled_from(ATTR_NAMES), attr_values),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("overwrite"), st.one_of(st.integers(0, 4096), st.floats(0, 1, exclude_max=True)),
              st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("redirect"), st.sampled_from(DATASETS + TAIL + GROUPS), st.sampled_from(REDIRECTS)),
    st.tuples(st.just("grow"), st.sampled_from(DATASETS + TAIL), st.sampled_from(HUGE_ROWS)),
)


def apply(path: Path, damages: Sequence[tuple[Any, ...]], open_for_write: bool = False) -> None:
    """Damage ``path``: through h5py first (a damage that h5py refuses is left out), then its
    bytes. ``open_for_write``: in between, mark it as a killed writer leaves it (only SWMR
    mode reads it then, and that mode retries failed metadata reads)."""
    # Growing after the damages that read a dataset whole (it would not fit in memory), redirects
    # last and none below an earlier one (damaging what lies behind one would block on its FIFO).
    late = {"grow": 1, "redirect": 2}
    h5_damages = sorted((d for d in damages if d[0] not in ("truncate", "overwrite")), key=lambda d: late.get(d[0], 0))
    redirected: list[str] = []
    with h5py.File(path, "r+") as f:
        for kind, *args in h5_damages:
            if kind == "redirect":
                if any(args[0] == done or args[0].startswith(f"{done}/") for done in redirected):
                    continue
                redirected.append(args[0])
            with contextlib.suppress(KeyError, OSError, TypeError, ValueError, RuntimeError):
                _h5_damage(f, kind, *args)
    if open_for_write:
        mark_open_for_write(path)
    size = path.stat().st_size
    with open(path, "r+b") as raw:
        for kind, *args in (d for d in damages if d[0] in ("truncate", "overwrite")):
            where = args[0] if isinstance(args[0], int) else int(args[0] * size)
            if kind == "truncate":
                raw.truncate(where)
            else:
                raw.seek(where)
                raw.write(args[1])


def mark_open_for_write(path: Path) -> None:
    """Copy the file as it is on disk while a SWMR writer holds it, as a kill would leave it."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    try:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl)
    except (OSError, RuntimeError, ValueError):
        return  # damaged beyond opening for write: it stays as it is
    snapshot = path.with_name(f"open-{path.name}")
    shutil.copyfile(path, snapshot)
    fid.close()
    snapshot.replace(path)


def elsewhere(f: h5py.File) -> Path:
    """A FIFO beside the file: nothing writes to it, so a reader that opens it blocks for ever."""
    fifo = Path(f.filename).with_name("elsewhere.fifo")
    if not fifo.exists():
        os.mkfifo(fifo)
    return fifo


def redirect(f: h5py.File, path: str, how: str, target: Path) -> None:
    """Make ``path`` read ``target``, another file, in one of the ways HDF5 allows. A dataset
    keeps its shape and type (so only where its data lies is wrong); a group becomes a dataset."""
    old = f[path]
    shape, dtype = (old.shape, old.dtype) if isinstance(old, h5py.Dataset) else ((3,), np.dtype("i8"))
    del f[path]
    if how == "external-link":
        f[path] = h5py.ExternalLink(str(target), "/")
    elif how == "soft-link":  # itself inside the file, but it leads on through an external link
        if "elsewhere" not in f:
            f["elsewhere"] = h5py.ExternalLink(str(target), "/")
        f[path] = h5py.SoftLink("/elsewhere")
    elif how == "external-storage":  # the raw data lies in the target
        f.create_dataset(path, shape, dtype, external=[(str(target), 0, h5py.h5f.UNLIMITED)])
    else:  # virtual, growing with its source: even its shape is read from the target
        unlimited = (None, *shape[1:])
        layout = h5py.VirtualLayout(shape, dtype, maxshape=unlimited)
        source = h5py.VirtualSource(str(target), "data", shape=shape, maxshape=unlimited)
        layout[0:h5py.h5s.UNLIMITED] = source[0:h5py.h5s.UNLIMITED]
        f.create_virtual_dataset(path, layout)


def grow(f: h5py.File, path: str, rows: int) -> None:
    """Give a dataset ``rows`` rows without writing them: a few bytes of metadata."""
    ds = f[path]
    if not isinstance(ds, h5py.Dataset) or ds.ndim == 0:
        return
    shape = (rows, *ds.shape[1:])
    if ds.maxshape[0] is None:
        ds.resize(shape)
    else:  # fixed length (the tail, a rewritten dataset): an empty one of the new length
        dtype = ds.dtype
        del f[path]
        f.create_dataset(path, shape=shape, dtype=dtype, maxshape=(None,) * len(shape), chunks=True)


def rechunk(f: h5py.File, path: str, rows: int) -> None:
    """Store a dataset, values kept, compressed in chunks of ``rows`` rows."""
    old = f[path][()]
    del f[path]
    f.create_dataset(path, data=old, chunks=(rows, *old.shape[1:]), maxshape=(None, *old.shape[1:]),
                     compression="gzip")


def _h5_damage(f: h5py.File, kind: str, *args: Any) -> None:
    if kind == "delete":
        del f[args[0]]
    elif kind == "redirect":
        redirect(f, args[0], args[1], elsewhere(f) if len(args) < 3 else Path(f.filename).with_name(args[2]))
    elif kind == "grow":
        grow(f, args[0], args[1])
    elif kind == "rechunk":
        rechunk(f, args[0], args[1])
    elif kind == "attr":
        f[args[0]].attrs[args[1]] = h5py.Empty("f8") if args[2] is None else args[2]
    elif kind == "regroup":  # a dataset where a group belongs, or the other way round
        was_group = isinstance(f[args[0]], h5py.Group)
        del f[args[0]]
        if was_group:
            f[args[0]] = np.arange(3)
        else:
            f.create_group(args[0])
    else:
        old = f[args[0]][()]
        del f[args[0]]
        if kind == "retype":
            dtype = DTYPES[args[1]]
            try:
                with warnings.catch_warnings():  # lossy on purpose: NaN to int, complex to real
                    warnings.simplefilter("ignore")
                    new = np.asarray(old).astype(dtype)
            except (TypeError, ValueError):
                new = np.zeros(np.shape(old), dtype=dtype)
            if dtype.kind == "O":
                new = np.full(np.shape(old), "x", dtype=object)
        else:
            flat = np.asarray(old).ravel()
            new = np.resize(flat, tuple(args[1])) if flat.size else np.zeros(tuple(args[1]), dtype=flat.dtype)
        f.create_dataset(args[0], data=new)


# -- running the commands -----------------------------------------------------------------------


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def invoke(args: Sequence[str | Path], codes: set[int] = EXIT_CODES, named: Path | None = None) -> Result:
    """Run a command in-process and assert it ended as documented: no traceback, a documented
    exit code, and on exit 2 a message naming ``named``."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    where = f"gfprobe {' '.join(map(str, args))}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        detail = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"{where} raised:\n{detail}")
    assert "Traceback" not in result.output, f"{where}:\n{result.output}"
    assert result.exit_code in codes, f"{where}: exit {result.exit_code}\n{result.output}"
    if result.exit_code == 2 and named is not None:
        assert str(named) in result.stderr, f"{where}: the message does not name the file:\n{result.output}"
    if "--format" in args and "json" in args and (result.stdout.strip() or result.exit_code == 0):
        json.loads(result.stdout, parse_constant=_no_constants)  # strict JSON: no NaN
    return result


def run_every_reader(path: Path, rank_file: Path, work: Path) -> None:
    for args in (["report"], ["report", "--format", "json"], ["report", "--per-layer"],
                 ["inspect"], ["inspect", "--format", "json"], ["plot", "--kind", "layers", "--out", work / "x.png"]):
        invoke([*args, path], named=path)
    for args in (["check"], ["check", "--format", "json"]):
        invoke([*args, path], CHECK_EXIT_CODES, named=path)
    merged = work / "merged.h5"
    invoke(["merge", rank_file, "--out", merged], named=rank_file)
    merged.unlink(missing_ok=True)


@pytest.mark.timeout(900, method="thread")  # a reader blocked on a FIFO never returns to Python to be signalled
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the environment fixture: same for all
@given(base=st.sampled_from(["recorded", "killed"]), damages=st.lists(damage, min_size=1, max_size=3))
def test_no_damage_gets_a_traceback_or_a_hang(bases: dict[str, Path], base: str,
                                              damages: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        path, rank_file = work / "run.h5", work / "run.rank0.h5"
        shutil.copyfile(bases[base], path)
        shutil.copyfile(bases[f"{base}-rank"], rank_file)
        apply(path, damages, open_for_write=base == "killed")
        apply(rank_file, damages, open_for_write=base == "killed")
        run_every_reader(path, rank_file, work)


def test_the_undamaged_bases_read_cleanly(bases: dict[str, Path], tmp_path: Path) -> None:
    killed = tmp_path / "open.h5"
    shutil.copyfile(bases["killed"], killed)
    mark_open_for_write(killed)
    for name in ("recorded", "killed", "open"):
        path = killed if name == "open" else bases[name]
        for args in (["report"], ["inspect"], ["report", "--format", "json"]):
            assert invoke([*args, path]).exit_code == 0
        if name == "open":
            continue
        assert invoke(["check", bases[name]], CHECK_EXIT_CODES).exit_code in (0, 1)
        assert invoke(["merge", bases[f"{name}-rank"], "--out", tmp_path / f"{name}.h5"]).exit_code == 0


# -- one test per bug the tester found ----------------------------------------------------------


def damaged(bases: dict[str, Path], tmp_path: Path, *damages: tuple[Any, ...], base: str = "recorded") -> Path:
    path = tmp_path / f"{base}-damaged.h5"
    shutil.copyfile(bases[base], path)
    apply(path, damages)
    return path


@pytest.mark.parametrize(("damage", "fragment"), [
    (("retype", "params/name", 1), "params/name holds int64, not text"),
    (("attr", "/", "schema_version", np.array([1, 1])), "schema_version is [1, 1], not an integer"),
    (("attr", "/", "status", np.array([1.0])), "status is [1.0], not text"),
    (("reshape", "stats/sumsq", [12, 1]), "the statistics have 1 columns for"),
    (("reshape", "stats/active", [12]), "stats/active has 1 dimensions, not 2"),
    (("retype", "stats/sum_abs", 5), "stats/sum_abs holds |S3, not numbers"),
    (("reshape", "stats/masked_sumsq", [5, 11]), "the step columns and statistics differ in length"),
    (("reshape", "params/kind", [2]), "the parameter columns differ in length"),
    (("delete", "steps/time"), "no dataset steps/time"),
    (("regroup", "stats"), "not a group /stats"),
    (("retype", "steps/hook_time", 5), "steps/hook_time holds |S3, not numbers"),
    (("reshape", "steps/writer_time", [5]), "the step columns and statistics differ in length"),
], ids=["names-as-integers", "array-schema-version", "array-status", "too-few-columns", "wrong-rank",
        "string-statistics", "fewer-rows-than-steps", "param-columns-disagree", "missing-dataset", "dataset-for-group",
        "string-cost", "cost-rows-disagree"])
def test_bug_schema_damage_got_a_traceback_or_passed_silently(bases: dict[str, Path], tmp_path: Path,
                                                              damage: tuple[Any, ...], fragment: str) -> None:
    path = damaged(bases, tmp_path, damage)
    for command in ("report", "check", "inspect"):
        result = invoke([command, path], CHECK_EXIT_CODES)
        (line,) = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and line.startswith(f"gfprobe: {path}: damaged run file: ") and fragment in line


def test_bug_deeply_nested_json_attribute_was_a_recursion_error(bases: dict[str, Path], tmp_path: Path) -> None:
    path = damaged(bases, tmp_path, ("attr", "attrs", "deep", DEEP_JSON[0]), ("attr", "/", "command", DEEP_JSON[1]))
    report = json.loads(invoke(["report", path, "--format", "json"]).stdout)
    assert report["runs"][0]["attrs"]["deep"] == DEEP_JSON[0]  # kept as the text it is
    inspected = json.loads(invoke(["inspect", path, "--format", "json"]).stdout)
    assert inspected["metadata"]["command"] == DEEP_JSON[1]


def test_bug_nan_attribute_made_json_output_invalid(bases: dict[str, Path]) -> None:
    """``gfprobe record --attr lr=NaN`` stores a NaN; JSON has no NaN, so it is null."""
    for command in ("report", "inspect"):
        payload = json.loads(invoke([command, bases["recorded"], "--format", "json"]).stdout,
                             parse_constant=_no_constants)
        assert payload["runs"][0]["attrs"]["lr"] is None if command == "report" else payload["attrs"]["lr"] is None


@pytest.mark.timeout(30)
def test_bug_a_fifo_named_like_a_run_file_hung_every_command(tmp_path: Path) -> None:
    fifo = tmp_path / "x.h5"
    os.mkfifo(fifo)
    for args in (["report", fifo], ["report", tmp_path], ["check", fifo], ["inspect", fifo],
                 ["plot", fifo, "--out", tmp_path / "x.png"], ["merge", fifo, "--out", tmp_path / "m.h5"]):
        result = invoke(args, named=fifo)
        assert result.exit_code == 2 and "not a regular file" in result.stderr


@pytest.mark.timeout(60)
def test_bug_damaged_metadata_of_a_killed_run_took_minutes_to_report(bases: dict[str, Path], tmp_path: Path) -> None:
    """A file its killed writer left open is read in SWMR mode, which retried each metadata read
    whose checksum failed 100 times with growing waits: one damaged object header, many minutes."""
    path = tmp_path / "killed.h5"
    shutil.copyfile(bases["killed"], path)
    with h5py.File(path, "r") as f:
        header = h5py.h5o.get_info(f["params/module_type"].id).addr
    apply(path, [("overwrite", header + 8, b"\xff\xfe\xfd\xfc")], open_for_write=True)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    result = invoke(["report", path], named=path)
    assert result.exit_code == 2 and "params/module_type cannot be opened" in result.stderr


def hostile(bases: dict[str, Path], tmp_path: Path, base: str, damages: Sequence[tuple[Any, ...]]) -> tuple[Path, Path]:
    """A base run and its rank file, damaged alike; a killed writer's stays marked open for write."""
    path, rank = tmp_path / f"{base}.h5", tmp_path / f"{base}.rank0.h5"
    for source, target in ((bases[base], path), (bases[f"{base}-rank"], rank)):
        shutil.copyfile(source, target)
        apply(target, damages, open_for_write=base == "killed")
    return path, rank


def assert_every_reader_refuses(path: Path, rank: Path, fragment: str, work: Path) -> None:
    """Each command ends with exit code 2 and one line naming the file and the problem."""
    commands = [(["report", path], path), (["report", "--format", "json", path], path), (["check", path], path),
                (["inspect", path], path), (["plot", path, "--kind", "layers", "--out", work / "x.png"], path),
                (["merge", rank, "--out", work / "merged.h5"], rank)]
    for args, named in commands:
        result = invoke(args, CHECK_EXIT_CODES, named=named)
        (line,) = result.stderr.strip().splitlines()
        refused = result.exit_code == 2 and line.startswith(f"gfprobe: {named}: damaged run file: ")
        assert refused and fragment in line, f"gfprobe {args[0]}: exit {result.exit_code}: {line}"


# A reader blocked opening a FIFO never returns to Python, where the signal method would end it.
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize(("base", "damage", "fragment"), [
    ("recorded", ("redirect", "attrs", "external-link"), "/attrs is an external link to another file"),
    ("recorded", ("redirect", "attrs", "external-link", "other.h5"), "/attrs is an external link to another file"),
    ("recorded", ("redirect", "steps/step", "external-link"), "steps/step is an external link"),
    ("recorded", ("redirect", "params", "soft-link"), "/params is a soft link"),
    ("recorded", ("redirect", "steps/step", "external-storage"), "steps/step keeps its data in another file"),
    ("recorded", ("redirect", "stats/sumsq", "virtual"), "stats/sumsq is a virtual dataset"),
    ("killed", ("redirect", "tail/steps", "external-link"), "tail/steps is an external link"),
    ("killed", ("redirect", "tail", "soft-link"), "/tail is a soft link"),
    ("killed", ("redirect", "tail/stats/sumsq", "external-storage"), "tail/stats/sumsq keeps its data in another"),
    ("killed", ("redirect", "metrics/value", "virtual"), "metrics/value is a virtual dataset"),
], ids=["external-link-group", "external-link-to-a-readable-file", "external-link-dataset", "soft-link",
        "external-storage", "virtual", "live-tail-external-link", "live-tail-soft-link", "live-tail-external-storage",
        "live-virtual"])
def test_bug_a_link_or_dataset_reading_another_file_hung_or_leaked_it(bases: dict[str, Path], tmp_path: Path,
                                                                     base: str, damage: tuple[Any, ...],
                                                                     fragment: str) -> None:
    """HDF5 lets a file read others: links to them, raw data in them, virtual datasets mapping
    them. Following one to a FIFO blocked every command; to a readable file, showed its contents.
    A run file holds its data itself: such a file is refused before anything is followed."""
    shutil.copyfile(bases["recorded"], tmp_path / "other.h5")
    path, rank = hostile(bases, tmp_path, base, [damage])
    assert_every_reader_refuses(path, rank, fragment, tmp_path)


STEP_TABLE = [f"steps/{c}" for c in schema.STEP_COLUMNS] + [f"stats/{f}" for f in schema.STAT_FIELDS]


@pytest.mark.parametrize(("base", "damages", "fragment"), [
    ("recorded", [("grow", p, 2**40) for p in STEP_TABLE], "steps/stream has 1099511627776 rows (2.0 TiB), more "
                                                           "than a file of"),
    ("recorded", [("grow", p, 3 * 10**8) for p in STEP_TABLE], "steps/stream has 300000000 rows (572.2 MiB)"),
    ("killed", [("grow", "params/name", 2**40)], "params/name has 1099511627776 rows"),
    ("killed", [("grow", "tail/steps/row", 2**40)], "tail/steps/row has 1099511627776 rows"),
    ("recorded", [("rechunk", "steps/step", 2**22)], "steps/step is stored in chunks of 32.0 MiB"),
], ids=["every-step-row", "rows-that-fit-in-memory", "live-parameters", "live-tail", "huge-chunks"])
def test_bug_a_small_file_claiming_huge_extents_ran_out_of_memory(bases: dict[str, Path], tmp_path: Path, base: str,
                                                                  damages: list[tuple[Any, ...]],
                                                                  fragment: str) -> None:
    """Resizing a dataset writes a few bytes, and its unwritten rows read as fill values: a small
    file declared 2**40 rows (a NumPy MemoryError traceback) or 3e8 (minutes of reading, then out
    of memory). No run file holds more than its size allows; such a file is refused at once. So is
    one whose chunks are huge: reading one cell inflates a whole chunk (1 GiB from 1 MB of file)."""
    path, rank = hostile(bases, tmp_path, base, damages)
    assert_every_reader_refuses(path, rank, fragment, tmp_path)


def test_a_read_that_runs_out_of_memory_names_the_file(bases: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The last resort, for a file too large for the machine: one line, not a traceback."""
    from gfprobe.store import reader, snapshot

    def no_memory(*_: object, **__: object) -> Any:
        raise MemoryError("Unable to allocate 9.00 TiB")

    path = bases["recorded"]
    with open_run(path) as run, pytest.raises(RunFileError, match=re.escape(f"{path}: not enough memory to read "
                                                                             "its statistics (Unable to allocate")):
        monkeypatch.setattr(snapshot.TableView, "column", no_memory)
        run.stream(0)
    monkeypatch.setattr(reader, "validate", no_memory)
    result = invoke(["report", path], named=path)
    assert result.exit_code == 2 and f"{path}: not enough memory to check it" in result.stderr


def test_bug_open_run_blamed_the_file_for_the_callers_error(bases: dict[str, Path]) -> None:
    with pytest.raises(KeyError, match="the caller's"), open_run(bases["recorded"]):
        raise KeyError("the caller's")
    with pytest.raises(ValueError, match="the caller's"), open_run(bases["recorded"]):
        raise ValueError("the caller's")


def test_read_methods_name_the_file_when_the_data_is_damaged(bases: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    shutil.copyfile(bases["recorded"], path)
    with h5py.File(path, "r") as f:
        chunk = f["stats/sumsq"].id.get_chunk_info(0)
    with open(path, "r+b") as raw:  # a compressed chunk that no longer inflates
        raw.seek(chunk.byte_offset)
        raw.write(b"\xff" * chunk.size)
    with open_run(path) as run, pytest.raises(RunFileError, match=re.escape(f"{path}: damaged run file: cannot "
                                                                             "read its statistics")):
        run.stream(0)
    result = invoke(["report", path])
    assert result.exit_code == 2 and "cannot read its statistics" in result.stderr


def test_a_live_file_whose_columns_are_in_flux_reads_its_consistent_prefix(bases: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """A writer grows one dataset after another: a reader of a running file may see the steps
    before the statistics, or a parameter before its cells. Not damage: fewer rows, never wrong."""
    path = tmp_path / "live.h5"
    shutil.copyfile(bases["killed"], path)
    with h5py.File(path, "r+") as f:
        assert f.attrs["status"] == "running"
        sumsq = f["tail/stats/sumsq"]
        row = f["tail/steps/row"][:]
        f["tail/steps/row"][int((row >= 0).sum()) - 1] = -1  # the last row's index not written yet
        sumsq.resize((sumsq.shape[0], 2))  # the third parameter's cells not yet in the tail
        f["params/kind"].resize((2,))
    with open_run(path) as run:
        first, second = run.stream(0), run.stream(1)
    assert first.steps.tolist() == list(range(20)) and first.stats["sumsq"].shape == (20, 2)
    assert second.steps.tolist() == list(range(19))  # the last row is not all there yet
    assert len(second.params) == 0 and second.stats["sumsq"].shape == (19, 0)  # nor its parameter
    assert invoke(["report", path]).exit_code == 0


# -- folders with bad files ---------------------------------------------------------------------


@pytest.fixture
def study(bases: dict[str, Path], tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """Two good runs and two damaged ones (truncated; statistics with fewer rows than steps)."""
    folder = tmp_path / "study"
    folder.mkdir()
    good = [folder / "a-good.h5", folder / "c-good.h5"]
    bad = [folder / "b-truncated.h5", folder / "d-short-stats.h5"]
    for path in [*good, *bad]:
        shutil.copyfile(bases["recorded"], path)
    apply(bad[0], [("truncate", 0.5)])
    apply(bad[1], [("reshape", "stats/sumsq", [6, 3])])
    return folder, good, bad


def test_bug_one_bad_file_stopped_the_report_of_a_folder(study: tuple[Path, list[Path], list[Path]]) -> None:
    folder, good, bad = study
    result = invoke(["report", folder], named=bad[0])
    assert result.exit_code == 2
    assert all(p.stem in result.stdout for p in good) and not any(p.stem in result.stdout for p in bad)
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == [str(p) for p in bad]
    payload = json.loads(invoke(["report", folder, "--format", "json"]).stdout)
    assert [r["path"] for r in payload["runs"]] == [str(p) for p in good]
    assert [u["path"] for u in payload["unreadable"]] == [str(p) for p in bad]
    assert "truncated" in payload["unreadable"][0]["error"] and "differ in length" in payload["unreadable"][1]["error"]


def test_bug_one_bad_file_stopped_the_check_of_a_folder(study: tuple[Path, list[Path], list[Path]]) -> None:
    folder, good, bad = study
    result = invoke(["check", folder], named=bad[1])
    assert result.exit_code == 2  # outranks a failing rule: two runs' health is unknown
    assert all(f"{p}: " in result.stdout for p in good)
    assert [line.split(": ")[1] for line in result.stderr.strip().splitlines()] == [str(p) for p in bad]
    payload = json.loads(invoke(["check", folder, "--format", "json"]).stdout)
    assert payload["passed"] is False and [r["path"] for r in payload["runs"]] == [str(p) for p in good]
    assert [u["path"] for u in payload["unreadable"]] == [str(p) for p in bad]


def test_unreadable_files_are_failed_checks_in_github_annotations_and_junit(
        study: tuple[Path, list[Path], list[Path]], tmp_path: Path) -> None:
    """CI shows annotations and JUnit, not stderr: an unreadable run must not look like a pass there."""
    folder, good, bad = study
    junit = tmp_path / "check.xml"
    result = invoke(["check", folder, "--format", "github", "--junit", junit], named=bad[0])
    assert result.exit_code == 2
    errors = [line for line in result.stdout.splitlines() if "title=gfprobe check readable::" in line]
    assert [line.split("file=")[1].split(",title=")[0] for line in errors] == [str(p) for p in bad]
    suites = {suite.get("name"): suite for suite in ET.parse(junit).getroot()}
    for path in bad:
        failure = suites[str(path)].find("testcase/failure")
        assert failure is not None and failure.get("type") == "readable"
    assert all(str(p) in suites for p in good)


def test_bug_one_bad_file_stopped_the_plot_of_a_folder(study: tuple[Path, list[Path], list[Path]],
                                                      tmp_path: Path) -> None:
    folder, _, bad = study
    out = tmp_path / "layers.png"
    result = invoke(["plot", folder, "--kind", "layers", "--out", out], named=bad[0])
    assert result.exit_code == 2 and out.read_bytes().startswith(b"\x89PNG")
    assert f"wrote {out}" in result.stderr and all(str(p) in result.stderr for p in bad)


def test_every_unreadable_file_is_listed_by_the_worker_processes(study: tuple[Path, list[Path], list[Path]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gfprobe.analysis import report

    folder, good, bad = study
    monkeypatch.setattr(report, "PARALLEL_FROM", 2)
    monkeypatch.setattr(report, "CHUNK", 1)
    runs, unreadable = report.read_report(sorted(folder.glob("*.h5")))
    assert [r.path for r in runs] == [str(p) for p in good]
    assert [u.path for u in unreadable] == [str(p) for p in bad]
    with pytest.raises(RunFileError, match=re.escape("b-truncated.h5: truncated")):
        report.build_report(sorted(folder.glob("*.h5")))


def test_merge_names_the_bad_rank_file(bases: dict[str, Path], tmp_path: Path) -> None:
    rank = damaged(bases, tmp_path, ("retype", "stats/max_abs", 5), base="recorded-rank")
    result = invoke(["merge", rank, "--out", tmp_path / "merged.h5"], named=rank)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "stats/max_abs holds |S3, not numbers" in result.stderr
    assert not (tmp_path / "merged.h5").exists()


def test_merge_keeps_text_with_a_nul_byte(bases: dict[str, Path], tmp_path: Path) -> None:
    """HDF5's variable-length text cannot hold it: it is stored as fixed-length bytes, which read
    back the same (it used to stop the merge)."""
    rank = damaged(bases, tmp_path, ("attr", "attrs", "note", np.bytes_(b"a\x00b")), base="recorded-rank")
    with open_run(rank, shards_ok=True) as run:
        before = run.attrs["note"]
    result = invoke(["merge", rank, "--out", tmp_path / "merged.h5"], named=rank)
    assert result.exit_code == 0, result.output
    with open_run(tmp_path / "merged.h5") as run:
        assert run.attrs["note"] == before


def test_bug_progress_bar_made_captured_output_depend_on_timing(bases: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar appeared on stderr whenever reading took over a second: golden tests failed on a
    busy machine. It is for terminals only."""
    from gfprobe.cli import _common

    monkeypatch.setattr(_common, "PROGRESS_AFTER_SECONDS", -1.0)
    result = invoke(["report", bases["recorded"], bases["killed"]])
    assert result.exit_code == 0 and result.stderr == ""
