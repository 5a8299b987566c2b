"""Bad options and bad files get one clear line and exit 2, never a traceback: output paths
(gfprobe/outpath.py), check and study configuration, ``scsdc plan``, ``report --by/--resamples``;
and ``scsdc run`` / ``demo`` show progress in logs. Explicit regressions first, then properties
over random input (hypothesis, derandomized)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gfprobe.analysis.check_config import DEFAULTS
from gfprobe.cli import main
from gfprobe.errors import ConfigError
from gfprobe.outpath import check_writable, check_writable_folder
from gfprobe.study import config as study_config
from gfprobe.study import runner
from gfprobe.study.config import load_study

RUNS = Path(__file__).parent.parent / "fixtures" / "runs"
RUN = RUNS / "dense.h5"
ALL_RUNS = [str(RUNS / name) for name in ("dense.h5", "sparse.h5", "amp.h5")]
PROPERTY = settings(deadline=None, derandomize=True, max_examples=200,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def invoke(args: Sequence[str]) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_clean(result: Result, codes: set[int], names: Sequence[str] = (), random: bool = False) -> None:
    """No traceback, an exit code from ``codes``, and on exit 2 one line naming one of ``names``."""
    if random:
        event(f"exit {result.exit_code}")  # --hypothesis-show-statistics: how many inputs were refused
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    assert result.exit_code in codes, result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()
                 and not line.startswith(("Usage:", "Try "))]  # click's usage errors add these two
        assert len(lines) == 1, result.stderr
        assert not names or any(name in lines[0] for name in names), lines[0]


def assert_refused(result: Result, *fragments: str) -> None:
    assert_clean(result, {2})
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ---------------------------------------------------------------- output paths


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written in, for real: a read-only tmpfs as root (who ignores
    permission bits), chmod 555 otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"root, but cannot mount a read-only tmpfs: {done.stderr.strip()}")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod 555 left the folder writable")
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def out_commands(target: Path) -> dict[str, list[str]]:
    return {
        "check --junit": ["check", str(RUN), "--junit", str(target / "gfprobe.xml")],
        "plot --out": ["plot", str(RUN), "--out", str(target / "plot.png")],
        "scsdc run --out": ["scsdc", "run", "--preset", "quick", "--out", str(target / "study")],
        "demo --out": ["demo", "--out", str(target / "study")],
    }


@pytest.mark.parametrize("command", list(out_commands(Path())))
def test_output_under_a_read_only_folder_is_one_line(read_only_dir: Path, command: str) -> None:
    result = invoke(out_commands(read_only_dir)[command])
    assert_refused(result, command.split()[-1], "cannot ", "Read-only file system" if os.geteuid() == 0
                   else "Permission denied", "choose a folder you can write to")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["check --junit", "plot --out"])
def test_bug_an_output_that_is_a_fifo_hung_the_command(tmp_path: Path, command: str) -> None:
    args = out_commands(tmp_path)[command]
    os.mkfifo(args[-1])  # opening it to write blocks until a reader comes
    assert_refused(invoke(args), command.split()[-1], "not a regular file")


@pytest.mark.parametrize("command", list(out_commands(Path())))
def test_output_under_a_file_is_one_line(a_file: Path, command: str) -> None:
    result = invoke(out_commands(a_file)[command])
    assert_refused(result, command.split()[-1], "a-file is a file, not a folder")


def test_scsdc_run_refuses_an_empty_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(invoke(["scsdc", "run", "--preset", "quick", "--out", ""]), "--out", "the path is empty")
    assert list(tmp_path.iterdir()) == []


def test_check_junit_refuses_a_folder(tmp_path: Path) -> None:
    assert_refused(invoke(["check", str(RUN), "--junit", str(tmp_path)]), "--junit", "is a directory")  # click's


def test_check_writable_resolves_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_writable(Path("new/deeper/x.xml"), "--junit") == tmp_path / "new" / "deeper" / "x.xml"
    assert check_writable_folder("new/study", "--out") == tmp_path / "new" / "study"
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "old.xml"
    existing.write_text("keep me")
    assert check_writable(existing, "--junit") == existing and existing.read_text() == "keep me"


@pytest.mark.parametrize(
    ("path", "fragment"),
    [("", "the path is empty"), ("   ", "the path is empty"), (".", "is a folder"), ("a\0b", "NUL character")],
)
def test_check_writable_refuses(path: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        check_writable(path, "--out")


def test_check_writable_folder_refuses_a_read_only_folder(read_only_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"--out .*: cannot write in .*ro"):
        check_writable_folder(read_only_dir, "--out")


# ---------------------------------------------------------------- check configuration


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tool = 3\n", "tool must be a table, got int 3"),
        ("tool.gfprobe = 3\n", "tool.gfprobe must be a table, got int 3"),
        ('[tool]\ngfprobe = "x"\n', "tool.gfprobe must be a table, got str 'x'"),
        ("[tool.gfprobe]\ncheck = [1, 2]\n", "tool.gfprobe.check must be a table, got list [1, 2]"),
        ("[tool.gfprobe.check]\ninstability = { max_cv = nan }\n", "instability.max_cv = nan must be a finite"),
        ("[tool.gfprobe.check]\nexploding = { threshold = inf }\n", "exploding.threshold = inf must be a finite"),
        ("[tool.gfprobe.check]\nimbalance = { max_ratio = 1" + "0" * 400 + " }\n", "must be a finite number"),
        ("[tool.gfprobe.check]\namp_skips = { max_fraction = 5 }\n", "must be a fraction from 0 to 1"),
    ],
    ids=["tool-int", "gfprobe-int", "gfprobe-str", "check-array", "nan", "inf", "huge-int", "fraction"],
)
def test_pyproject_check_config_of_the_wrong_type_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          text: str, fragment: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert_refused(invoke(["check", str(RUN)]), "pyproject.toml", fragment)


def test_check_config_not_utf8_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "check.toml"
    config.write_bytes(b"[vanishing]\nthreshold = 1e-9 # \xff\xfe\n")
    assert_refused(invoke(["check", str(RUN), "--config", str(config)]), "check.toml: not UTF-8 text")


# ---------------------------------------------------------------- study files


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("study = 3\n[[grid]]\n", "[study] must be a table, got int"),
        ('grid = "x"\n', "grid = 'x' must be tables written [[grid]]"),
        ("[study]\nname = 3\n[[grid]]\n", "name = 3 must be a non-empty string"),
        ("[[grid]]\ndensity = nan\n", "density = nan must be a finite number"),
        ("[[grid]]\ndensity = 1e-320\n", "density = 1e-320 is too small"),
        ("[[grid]]\nlr = inf\n", "lr = inf must be a finite number"),
        ("[[grid]]\nweight_decay = nan\n", "weight_decay = nan must be a finite number"),
        ("[[grid]]\nsparse_width = 100000000000000000000\n", "sparse_width = 100000000000000000000 is too large"),
        ("[[grid]]\nhidden_layers = 1000000\n", "hidden_layers = 1000000 is too large"),
        ("[[grid]]\nseed = 1" + "0" * 30 + "\n", "is too large"),
        ("[[grid]]\ndensity = []\n", "density = [] has no value"),
        ("[[grid]]\nseed = " + str(list(range(1001))) + "\nlr = " + str([0.1 * (i + 1) for i in range(1001)]) + "\n",
         "more than 1,000,000"),
        ("[[grid]]\ndensity = [0.1, 0.1000000001]\n", "two different runs get the id"),
    ],
    ids=["study-int", "grid-str", "name-int", "density-nan", "density-tiny", "lr-inf", "wd-nan", "width-huge",
         "depth-huge", "seed-huge", "empty-list", "too-many-runs", "same-id"],
)
def test_bad_study_file_is_one_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "study.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_study(path)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_study_file_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_bytes(b"[[grid]]\ndensity = 0.5 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"study.toml: not UTF-8 text \(invalid continuation byte at byte \d+\)"):
        load_study(path)


# ---------------------------------------------------------------- deeply nested TOML

# Valid TOML as far as the grammar goes, but tomllib recurses once per "[": a RecursionError
# (a traceback) unless it is caught next to TOMLDecodeError. 100,000 levels is past any limit.
DEEP = "x = " + "[" * 100_000 + "\n"
NESTED_TOO_DEEPLY = "arrays or inline tables nested too deeply to read"


def test_bug_deeply_nested_check_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "deep.toml"
    config.write_text("[tool.gfprobe.check]\n" + DEEP)
    assert_refused(invoke(["check", str(RUN), "--config", str(config)]), f"{config}: {NESTED_TOO_DEEPLY}")


def test_bug_deeply_nested_pyproject_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.gfprobe]\n" + DEEP)  # found, not named: no --config
    monkeypatch.chdir(tmp_path)
    assert_refused(invoke(["check", str(RUN)]), f"{tmp_path / 'pyproject.toml'}: {NESTED_TOO_DEEPLY}")


def test_bug_deeply_nested_study_file_is_one_line(tmp_path: Path) -> None:
    study = tmp_path / "deep.toml"
    study.write_text("[[grid]]\n" + DEEP)
    with pytest.raises(ConfigError, match=f"deep.toml: {NESTED_TOO_DEEPLY}"):
        load_study(study)
    result = invoke(["scsdc", "run", "--config", str(study), "--out", str(tmp_path / "out")])
    assert_refused(result, f"{study}: {NESTED_TOO_DEEPLY}")
    assert not (tmp_path / "out").exists()  # refused before anything was made


# Also valid TOML: tomllib turns the digits into an int, past Python's 4,300-digit conversion limit.
HUGE_INTEGER = "x = " + "9" * 5000 + "\n"


@pytest.mark.parametrize("where", ["--config", "pyproject", "study"])
def test_bug_an_integer_of_5000_digits_was_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       where: str) -> None:
    monkeypatch.chdir(tmp_path)
    if where == "study":
        path = tmp_path / "study.toml"
        path.write_text("[[grid]]\n" + HUGE_INTEGER)
        result = invoke(["scsdc", "run", "--config", str(path), "--out", str(tmp_path / "out")])
    else:
        path = tmp_path / ("pyproject.toml" if where == "pyproject" else "check.toml")
        path.write_text("[tool.gfprobe.check]\n" + HUGE_INTEGER)
        result = invoke(["check", str(RUN), *(["--config", str(path)] if where == "--config" else [])])
    assert_refused(result, f"{path}: a value cannot be read", "4300")


# ---------------------------------------------------------------- scsdc plan and report


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--densities", ""], "--densities '': no density given"),
        (["--densities", " , "], "no density given"),
        (["--densities", "1e-320"], "density = 1e-320 is too small"),
        (["--densities", "0.5,nan"], "density = nan is outside (0, 1]"),
        (["--densities", "inf"], "density = inf is outside (0, 1]"),
        (["--densities", "-0.1"], "density = -0.1 is outside (0, 1]"),
        (["--sparse-width", str(10**400)], "'--sparse-width'"),
        (["--sparse-width", "-5"], "'--sparse-width'"),
        (["--hidden-layers", "0"], "'--hidden-layers'"),
        (["--hidden-layers", str(10**20)], "'--hidden-layers'"),
    ],
)
def test_scsdc_plan_refuses_bad_options(args: list[str], fragment: str) -> None:
    assert_refused(invoke(["scsdc", "plan", *args]), fragment)


def test_report_by_an_unknown_attribute_names_it_and_the_known_ones() -> None:
    result = invoke(["report", *ALL_RUNS, "--correlate", "test_acc", "--by", "seeds"])
    assert_refused(result, "--by seeds: no run has an attribute 'seeds' (did you mean 'seed'?)",
                   "attributes every run has: density, optimizer, seed, sparse")


def test_report_by_an_attribute_only_some_runs_have_says_which_lack_it(tmp_path: Path) -> None:
    copies = [shutil.copy(path, tmp_path) for path in ALL_RUNS]
    with h5py.File(copies[0], "a") as handle:
        handle["attrs"].attrs["lr"] = 0.1
    result = invoke(["report", *map(str, copies), "--correlate", "test_acc", "--by", "lr"])
    assert_refused(result, "--by lr: 2 of 3 runs have no attribute 'lr' (sparse.h5, amp.h5)")


def test_report_by_without_correlate_is_refused() -> None:
    assert_refused(invoke(["report", str(RUN), "--by", "optimizer"]), "--by splits the correlation table")


def test_report_refuses_absurd_resamples() -> None:
    assert_refused(invoke(["report", *ALL_RUNS, "--correlate", "test_acc", "--resamples", str(10**30)]),
                   "--resamples", "is more than 100,000")


# ---------------------------------------------------------------- progress in logs


def test_log_progress_prints_every_five_percent_and_at_the_end() -> None:
    lines: list[str] = []
    log = runner.LogProgress(48, lines.append, interval=None)
    log.on_start(8, 40)
    for index in range(40):
        log.on_run(None, "boom" if index in (3, 17) else None)  # type: ignore[arg-type]
    assert lines[0] == "gfprobe: 48 runs, 8 done before, 40 to train"
    assert len(lines) == 1 + 40 // 2  # every = ceil(40 × 5%) = 2 runs
    assert lines[1].startswith("gfprobe: 10/48 runs done, 0 failed, ")
    assert lines[-1].startswith("gfprobe: 48/48 runs done, 2 failed, ") and lines[-1].endswith(" elapsed")


def test_log_progress_prints_once_a_minute_when_runs_are_slow() -> None:
    ticks = iter(range(0, 10_000, 61))  # a fake clock: every reading 61 s after the last
    lines: list[str] = []
    log = runner.LogProgress(100, lines.append, interval=60.0, clock=lambda: float(next(ticks)))
    log.on_start(0, 100)  # every 5 runs, but each run here takes over a minute
    for _ in range(3):
        log.on_run(None, None)  # type: ignore[arg-type]
    assert lines[1:] == ["gfprobe: 1/100 runs done, 0 failed, 1m01s elapsed",
                         "gfprobe: 2/100 runs done, 0 failed, 2m02s elapsed",
                         "gfprobe: 3/100 runs done, 0 failed, 3m03s elapsed"]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.9, "42s"), (190, "3m10s"), (3725, "1h02m05s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert runner.format_duration(seconds) == text


@pytest.mark.parametrize("command", [["scsdc", "run", "--preset", "quick"], ["demo"]])
def test_scsdc_run_and_demo_print_progress_lines_when_not_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    command: list[str]) -> None:
    def fake_study(study: Any, out: Path, options: Any, on_start: Any, on_run: Any) -> runner.StudyOutcome:
        on_start(0, len(study))
        for index, spec in enumerate(study.runs):
            on_run(spec, "boom" if index == 5 else None)
        return runner.StudyOutcome()

    for name in ("FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runner, "LOG_EVERY_SECONDS", None)
    monkeypatch.setattr(runner, "check_study", lambda study, options: None)
    monkeypatch.setattr(runner, "run_study", fake_study)
    result = invoke([*command, "--out", str(tmp_path / "study")])
    progress = [line for line in result.stderr.splitlines() if " runs done, " in line]
    assert len(progress) == 72 // 4  # the quick preset: 72 runs, a line per ceil(72 × 5%) = 4
    assert progress[0].startswith("gfprobe: 4/72 runs done, 0 failed, ")
    assert progress[-1].startswith("gfprobe: 72/72 runs done, 1 failed, ")


# ---------------------------------------------------------------- properties over random input


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML wants DEL escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{ " + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in document.items())


def keys_of(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from keys_of(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from keys_of(inner)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
SCALARS = st.one_of(st.booleans(), st.integers(), st.sampled_from([-1, 0, 1, 10**19, 10**400]),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)


def values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                        max_leaves=6)


RULE_KEYS = st.sampled_from([*DEFAULTS, "vanshing"]) | TEXT
SETTING_KEYS = st.sampled_from(sorted({key for rule in DEFAULTS.values() for key in rule})) | TEXT
CHECK_VALUES = values(SETTING_KEYS)
CHECK_TABLE = st.dictionaries(RULE_KEYS, st.dictionaries(SETTING_KEYS, CHECK_VALUES, max_size=3) | CHECK_VALUES,
                              max_size=3)
GFPROBE = st.one_of(CHECK_VALUES, st.fixed_dictionaries({"check": CHECK_TABLE | CHECK_VALUES}),
                    st.dictionaries(st.sampled_from(["check", "record"]) | TEXT, CHECK_VALUES, max_size=2))
CHECK_DOCUMENTS = st.fixed_dictionaries({"tool": st.one_of(CHECK_VALUES, st.fixed_dictionaries({"gfprobe": GFPROBE}))})
def config_names(document: dict[str, Any]) -> list[str]:
    keys = list(keys_of(document))
    return [*filter(None, keys), *map(repr, keys), "not valid TOML", "must be a table"]


@PROPERTY
@given(document=CHECK_DOCUMENTS)
def test_random_pyproject_check_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        document: dict[str, Any]) -> None:
    (tmp_path / "pyproject.toml").write_text(toml_document(document), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert_clean(invoke(["check", str(RUN), "--format", "json"]), {0, 1, 2}, config_names(document), random=True)


@PROPERTY
@given(document=CHECK_TABLE | CHECK_DOCUMENTS, raw=st.none() | st.binary(max_size=40))
def test_random_check_config_files(tmp_path: Path, document: dict[str, Any], raw: bytes | None) -> None:
    config = tmp_path / "check.toml"
    config.write_bytes(raw if raw is not None else toml_document(document).encode())
    names = [*config_names(document), "UTF-8"] if raw is None else ["check.toml"]
    assert_clean(invoke(["check", str(RUN), "--config", str(config)]), {0, 1, 2}, names, random=True)


def axis_values() -> st.SearchStrategy[Any]:
    plausible = st.one_of(st.sampled_from(["mnist1d", "digits", "mlp", "cnn", "adam", "sgd", "NR", "BN", "relu"]),
                          st.integers(-3, 600), st.floats(0, 1.5, allow_nan=False), st.just(1e-320))
    return st.one_of(plausible, st.lists(plausible, max_size=2), SCALARS)


def grid_value(key: str) -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind for ``key`` (so studies get as far as capacity planning)."""
    if key in study_config.CHOICES:
        right: st.SearchStrategy[Any] = st.sampled_from(list(study_config.CHOICES[key]))
    elif key in study_config.INTEGERS:
        right = st.integers(-1, 3000) | st.sampled_from([10**6, 10**7, 2**63, 10**400])
    else:  # density, lr, weight_decay
        right = st.floats(0, 1.2) | st.sampled_from([1e-7, 5e-7, 1e-320, math.nan, math.inf])
    return st.one_of(right, st.lists(right, min_size=0, max_size=2), SCALARS)


STUDY_KEYS = st.sampled_from(list(study_config.STUDY_KEYS)) | TEXT
GRID_KEYS = st.sampled_from([*study_config.AXES, *study_config.SETTINGS])
GRID = st.dictionaries(GRID_KEYS, axis_values(), max_size=4) | SCALARS
PLAUSIBLE_GRID = st.fixed_dictionaries({}, optional={key: grid_value(key) for key in
                                                     (*study_config.AXES, *study_config.SETTINGS)})
STUDY_DOCUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(["study", "grid"]) | TEXT, st.dictionaries(STUDY_KEYS, axis_values(), max_size=3)
                    | st.lists(GRID, max_size=2) | SCALARS, max_size=3),
    st.fixed_dictionaries({"grid": st.lists(PLAUSIBLE_GRID, min_size=1, max_size=2)}),
)
STUDY_NAMES = [*study_config.STUDY_KEYS, *study_config.AXES, "study", "grid", "TOML", "UTF-8", "sparse width",
               "density", "table"]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """``scsdc run`` up to training: every check of the study and its plans, no device or data set."""
    from gfprobe.study import data

    monkeypatch.setattr(runner, "check_device", lambda device: None)
    monkeypatch.setattr(data, "load", lambda *args: None)
    monkeypatch.setattr(runner, "run_study", lambda *args: runner.StudyOutcome())


@PROPERTY
@given(document=STUDY_DOCUMENTS, raw=st.none() | st.binary(max_size=40))
def test_random_study_files(tmp_path: Path, no_training: None, document: dict[str, Any], raw: bytes | None) -> None:
    config = tmp_path / "study.toml"
    config.write_bytes(raw if raw is not None else toml_document(document).encode())
    result = invoke(["scsdc", "run", "--config", str(config), "--out", str(tmp_path / "out"), "--no-report"])
    assert_clean(result, {0, 2}, [*STUDY_NAMES, *config_names(document)], random=True)


DENSITY_TEXT = st.one_of(
    TEXT, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4).map(lambda xs: ",".join(map(repr, xs))),
    st.lists(st.sampled_from(["0.1", "0.5", "1", " ", "1e-6", "1e-7", "x"]), max_size=4).map(",".join),
    st.lists(st.sampled_from(["0.1", "0.25", "0.5", "0.9", "1"]), min_size=1, max_size=3).map(",".join))
INTEGER_TEXT = st.one_of(st.integers(-5, 40), st.integers(1, 600), st.integers(), st.just(10**400)).map(str) | TEXT
PLAN_NAMES = ["--densities", "density", "--hidden-layers", "--sparse-width", "sparse width", "'--arch'"]


@PROPERTY
@given(densities=DENSITY_TEXT, hidden=INTEGER_TEXT, width=INTEGER_TEXT, arch=st.sampled_from(["mlp", "cnn"]),
       output_format=st.sampled_from(["table", "json"]))
def test_random_scsdc_plan_options(densities: str, hidden: str, width: str, arch: str, output_format: str) -> None:
    result = invoke(["scsdc", "plan", f"--densities={densities}", f"--hidden-layers={hidden}",
                     f"--sparse-width={width}", "--arch", arch, "--format", output_format])
    assert_clean(result, {0, 2}, PLAN_NAMES, random=True)


@settings(PROPERTY, max_examples=80)  # each example reads three run files
@given(by=st.lists(st.sampled_from(["optimizer", "seed", "sparse"]) | TEXT, max_size=2),
       resamples=st.one_of(st.integers(-3, 50), st.integers(), st.just(10**400)).map(str) | TEXT,
       correlate=st.booleans())
def test_random_report_by_and_resamples(by: list[str], resamples: str, correlate: bool) -> None:
    args = ["report", *ALL_RUNS, f"--resamples={resamples}", *(f"--by={attr}" for attr in by)]
    result = invoke([*args, *(["--correlate", "test_acc"] if correlate else [])])
    assert_clean(result, {0, 2}, ["--by", "--resamples", "--correlate"], random=True)
