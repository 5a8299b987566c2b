"""Strings in run files and file names are data: every command and format shows them without
the terminal obeying them (escape sequences), rich reading them (markup), a workflow reading
them (GitHub annotations) or a parser choking on them (JUnit XML); plus the report's summary
in its titles, the correlation interval with few runs, and tables at 80 columns."""

from __future__ import annotations

import json
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from gfprobe.analysis.correlation import MIN_INTERVAL_RUNS
from gfprobe.cli import main
from gfprobe.render.safe import inline, markdown, printable
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

F = {name: i for i, name in enumerate(STAT_FIELDS)}
STEPS = 12
HOSTILE = [
    "\x1b[2J",  # clear the screen
    "\x1b]0;title\x07",  # set the window title
    "\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\",  # an OSC-8 hyperlink
    "\x9b31m",  # C1 CSI
    "bell\x07",
    "over\rwrite",
    "\u202eevil",  # bidi override
    "[link=http://evil]x[/link]",
    "[/]",
    "[bold red]",
    "\n::warning::injected",
    "::error title=gfprobe::all runs pass",  # a workflow command if a line starts with it
    "x ##[error]pwned",  # the older form, read anywhere in a line
]
MARKUP = "[link=http://evil]x[/link]"


def write_run(path: Path, hostile: str, attrs: Mapping[str, object], acc: float, l2: float = 1.0,
              steps: int = STEPS) -> Path:
    """A run with ``hostile`` in every string the file holds and ``steps`` recorded steps (at least
    6); its first layer has a NaN, so ``check`` fails and names that layer."""
    params = [ParamInfo(f"{hostile}.weight", (4, 4), "weight", hostile, "explicit"),
              ParamInfo(f"fc2{hostile}.weight", (2, 4), "weight", f"Linear{hostile}"),
              ParamInfo(f"fc2{hostile}.bias", (2,), hostile[:6], "Linear")]
    block = np.zeros((steps, len(STAT_FIELDS), len(params)))
    for col in (0, 1):
        for field in ("masked_sumsq", "sumsq"):
            block[:, F[field], col] = l2**2
        for field in ("masked_sum_abs", "sum_abs"):
            block[:, F[field], col] = 3 * l2
    block[:, F["active"]] = [p.numel for p in params]
    block[:, F["has_grad"]] = 1
    block[5, F["nonfinite"], 0] = 2
    writer = RunWriter(path, {"command": [hostile], hostile: hostile}, {hostile: hostile, **attrs})
    writer.add_stream(f"SGD{hostile}", params)
    writer.append_steps(StepBlock(0, np.arange(steps), np.arange(steps) * 0.1, np.zeros(steps, np.uint8), block))
    writer.append_metrics([("acc", steps, 1.0, acc), (hostile, steps, 1.0, 0.5)])
    writer.close(f"complete{hostile}", {})
    return writer.path


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("hostile")
    return [write_run(folder / f"run{i}{h.replace('/', '_')}.h5", h,
                      {"tag": HOSTILE[i % 2], "sparse": i % 2 == 0, "optimizer": h}, acc=0.5 + 0.03 * i,
                      l2=1.0 + 0.1 * ((i * 7) % 5))
            for i, h in enumerate(HOSTILE)]


def _bad_characters(text: str) -> list[str]:
    """Characters a terminal could act on: anything not printable but newline and tab."""
    return sorted({c for c in text if c not in "\n\t" and not c.isprintable()})


def invoke(args: Sequence[str], width: int = 400) -> Result:
    result = CliRunner().invoke(main, list(args), env={"NO_COLOR": "1", "GFPROBE_WIDTH": str(width)})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1), result.output
    return result


def _per_file_commands(path: str, junit: Path) -> Iterator[list[str]]:
    for output in ("table", "json", "csv", "markdown"):
        yield ["report", path, "--format", output]
    yield ["report", path, "--per-layer"]
    yield ["report", path, "--per-layer", "--format", "markdown"]
    for output in ("table", "json", "github"):
        yield ["check", path, "--format", output, "--junit", str(junit)]
    for output in ("table", "json"):
        yield ["inspect", path, "--format", output]


def _many_file_commands(paths: Sequence[str]) -> Iterator[list[str]]:
    for output in ("table", "json", "csv", "markdown"):
        yield ["report", *paths, "--correlate", "acc", "--by", "tag", "--resamples", "50", "--format", output]
        yield ["report", *paths, "--scsdc", "--scsdc-metric", "acc", "--format", output]
    yield ["check", *paths, "--format", "github"]


def _workflow_commands(text: str, github_format: bool) -> list[str]:
    """Lines GitHub Actions would read as a workflow command: '::' first (after spaces) or '##['
    anywhere; in ``--format github`` output, the lines gfprobe means as commands are left out."""
    lines = [line.lstrip() for line in text.splitlines()]
    if github_format:
        lines = [line for line in lines if not line.startswith(("::error file=", "::notice file="))]
    return [line for line in lines if line.startswith("::") or "##[" in line]


def _check_output(args: Sequence[str], result: Result, junit: Path) -> None:
    for stream in (result.stdout, result.stderr):
        assert _bad_characters(stream) == [], (args, stream)
        assert _workflow_commands(stream, "github" in args) == [], (args, stream)
    assert "MarkupError" not in result.output
    if "github" in args:
        assert all(line.startswith(("::error ", "::notice ")) for line in result.stdout.splitlines()), result.stdout
    if "--junit" in args:
        root = ET.parse(junit).getroot()
        assert root.tag == "testsuites" and _bad_characters(junit.read_text(encoding="utf-8")) == []


def test_hostile_strings_are_shown_not_obeyed(hostile_runs: list[Path], tmp_path: Path) -> None:
    """Every command and format on run files whose every string is hostile."""
    junit = tmp_path / "junit.xml"
    reads = printed_control = 0
    for path in hostile_runs:
        for args in _per_file_commands(str(path), junit):
            result = invoke(args)
            reads += 1
            printed_control += bool(_bad_characters(result.stdout + result.stderr))
            _check_output(args, result, junit)
            if path == hostile_runs[HOSTILE.index(MARKUP)]:  # shown as text (or escaped), not as a hyperlink
                assert "[link=" in result.stdout, result.stdout
    for args in _many_file_commands([str(p) for p in hostile_runs]):
        result = invoke(args)
        reads += 1
        printed_control += bool(_bad_characters(result.stdout + result.stderr))
        _check_output(args, result, junit)
    assert reads == len(HOSTILE) * 11 + 9 and printed_control == 0


def test_hostile_strings_at_80_columns(hostile_runs: list[Path], tmp_path: Path) -> None:
    """Narrow tables shorten and fold what comes from files; what is left stays inert."""
    for path in hostile_runs:
        for args in (["report", str(path), "--per-layer"], ["check", str(path)], ["inspect", str(path)]):
            result = invoke(args, width=80)
            _check_output(args, result, tmp_path / "unused.xml")


def test_markup_in_a_name_is_text_in_every_format(hostile_runs: list[Path]) -> None:
    path = hostile_runs[HOSTILE.index(MARKUP)]
    table = invoke(["inspect", str(path)]).stdout
    assert f"attrs.{MARKUP}" in table and f"{MARKUP}.weight" in table
    listed = json.loads(invoke(["inspect", str(path), "--format", "json"]).stdout)
    assert listed["attrs"][MARKUP] == MARKUP  # JSON keeps the data exact
    md = invoke(["report", str(path), "--per-layer", "--format", "markdown"]).stdout
    assert r"\[link=http://evil\]x\[/link\].weight" in md
    assert f"{MARKUP}_last" in invoke(["report", str(path), "--format", "csv"]).stdout  # the metric's column


def test_a_newline_in_a_file_name_cannot_inject_a_workflow_command(hostile_runs: list[Path]) -> None:
    path = next(p for p in hostile_runs if "injected" in p.name)
    out = invoke(["check", str(path), "--format", "github"]).stdout
    assert out.count("\n") == 1 and out.startswith("::error ")  # one line: nothing starts a second command
    assert "file=" + str(path.parent).replace(":", "%3A") + "/run10\\n%3A%3Awarning%3A%3Ainjected.h5," in out


def test_github_escaping_follows_the_workflow_command_rules() -> None:
    from gfprobe.analysis.check import Finding, RunCheck
    from gfprobe.render.check import render_github

    check = RunCheck("a,b:c%.h5", [Finding("dead", "fail", "100% dead: x,y")])
    assert render_github([check]) == "::error file=a%2Cb%3Ac%25.h5,title=gfprobe check dead::100%25 dead: x,y\n"


def test_user_errors_show_paths_inert(tmp_path: Path) -> None:
    missing = tmp_path / "gone\x1b]0;pwned\x07\u202e.h5"
    result = CliRunner().invoke(main, ["report", str(missing)])
    assert result.exit_code == 2
    assert _bad_characters(result.output) == [] and "gone\\x1b]0;pwned\\x07\\u202e.h5" in result.output


# -- the sanitiser ---------------------------------------------------------------------------

@settings(deadline=None, derandomize=True, max_examples=200)
@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(value: str) -> None:
    shown = printable(value)
    assert shown.isprintable()
    assert printable(shown) == shown  # idempotent: sanitising twice changes nothing


@settings(deadline=None, derandomize=True, max_examples=100)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printable_ascii_passes_unchanged_but_workflow_command_openers(value: str) -> None:
    shown = printable(value)
    if "::" not in value and "##[" not in value:
        assert shown == value
    assert "::" not in shown and "##[" not in shown
    if "\\x3a" not in value and "\\x5b" not in value:  # else the escapes' text was there already
        assert shown.replace(":\\x3a", "::").replace("##\\x5b", "##[") == value  # nothing else changed


def test_message_lines_keep_double_colons_and_break_up_the_other_opener() -> None:
    """After 'gfprobe: ' a '::' starts no workflow command (torch's 'c10::Error' reads as written);
    '##[' does anywhere in a line."""
    assert inline("c10::Error at ##[error]x\x1b") == "c10::Error at ##\\x5berror]x\\x1b"


@pytest.mark.parametrize("name", ["::error::x.h5", "::error title=t::x", "a ##[error]b", ":::", "a::b::c"])
def test_bug_a_name_could_start_a_workflow_command_in_a_ci_log(tmp_path: Path, name: str) -> None:
    """The table title of ``check`` and a CSV row start with a run's path: a file named
    '::error::...' made an annotation in GitHub Actions, and '##[' does anywhere in a line."""
    path = write_run(tmp_path / f"{name}.h5", "x", {"sparse": True}, acc=0.5)
    for args in (["check", str(path)], ["report", str(path), "--format", "csv"],
                 ["report", str(path), "--format", "json"], ["inspect", str(path)]):
        result = invoke(args)
        assert _workflow_commands(result.output, github_format=False) == [], (args, result.output)
        if "json" in args:
            assert json.loads(result.stdout)["runs"][0]["path"] == str(path)  # JSON keeps it exact


@settings(deadline=None, derandomize=True, max_examples=100)
@given(st.text())
def test_a_markdown_cell_stays_one_cell(value: str) -> None:
    cell = markdown(value)
    assert "\n" not in cell and "\r" not in cell
    assert re.search(r"(?<!\\)(\\\\)*\|", cell) is None  # every | escaped


@pytest.mark.parametrize(("value", "shown"), [
    ("\x1b[2J", "\\x1b[2J"), ("a\nb\tc\rd", "a\\nb\\tc\\rd"), ("\x9b", "\\x9b"), ("\x7f", "\\x7f"),
    ("\u202e", "\\u202e"), ("\U000e0001", "\\U000e0001"), ("\udcff", "\\udcff"), ("τ ‖g⊙m‖₂ ±", "τ ‖g⊙m‖₂ ±"),
], ids=["esc", "whitespace", "c1", "del", "bidi", "tag", "surrogate", "unicode-text"])
def test_printable_escapes(value: str, shown: str) -> None:
    assert printable(value) == shown


# -- item 3: the summary a report used is the one it names -----------------------------------

def _plain_runs(folder: Path, n: int, attrs: Sequence[Mapping[str, object]] = ()) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        extra = attrs[i] if attrs else {"sparse": i % 2 == 0}
        paths.append(str(write_run(folder / f"r{i}.h5", "x", extra, acc=float(rng.uniform(0.5, 0.9)),
                                   l2=float(rng.uniform(0.5, 2.0)))))
    return paths


@pytest.mark.parametrize(("how", "words"), [
    ("points", "mean over 11 evenly spaced recorded steps"), ("mean", "mean over all recorded steps"),
    ("last", "value at the last recorded step"), ("max", "maximum over the recorded steps"),
])
def test_bug_report_title_names_the_summary_used(tmp_path: Path, how: str, words: str) -> None:
    paths = _plain_runs(tmp_path, 2)
    table = invoke(["report", *paths, "--summary", how]).stdout
    assert f"Gradient flow (minibatch): {words}" in table and ("11 evenly" in table) == (how == "points")
    markdown = invoke(["report", *paths, "--summary", how, "--format", "markdown"]).stdout
    assert f"**Gradient flow (minibatch): {words}**" in markdown
    runs = json.loads(invoke(["report", *paths, "--summary", how, "--format", "json"]).stdout)["runs"]
    assert all(run["summary"]["how"] == how for run in runs)


def test_bug_scatter_axis_names_the_summary_used(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gfprobe.analysis.report import build_report
    from gfprobe.render.plots import plot_scatter

    runs = build_report(_plain_runs(tmp_path, 4), how="max")
    svg = plot_scatter(runs, tmp_path / "s.svg", metric="acc").read_text()
    assert "max over steps" in svg and "11-point" not in svg


def _runs_with_steps(folder: Path, counts: Sequence[int]) -> list[str]:
    return [str(write_run(folder / f"r{i}.h5", "x", {"sparse": i % 2 == 0}, acc=0.5 + 0.1 * i, steps=n))
            for i, n in enumerate(counts)]


@pytest.mark.parametrize(("counts", "words"), [
    ([10, 10], "mean over all 10 recorded steps"),
    ([10, 12], "mean over 11 evenly spaced recorded steps (all steps of runs with fewer)"),
    ([11, 12], "mean over 11 evenly spaced recorded steps"),
], ids=["all-fewer", "some-fewer", "none-fewer"])
def test_bug_report_title_says_how_many_steps_were_averaged(tmp_path: Path, counts: list[int], words: str) -> None:
    # A run with fewer recorded steps than the 11 points averages all of its steps once.
    paths = _runs_with_steps(tmp_path, counts)
    title = invoke(["report", *paths]).stdout.splitlines()[0]
    assert title.strip() == f"Gradient flow (minibatch): {words}"
    assert f"**Gradient flow (minibatch): {words}**" in invoke(["report", *paths, "--format", "markdown"]).stdout


@pytest.mark.parametrize(("runs", "short", "words"), [
    ([("points", 11, 10), ("points", 11, 10)], False, "mean over all 10 recorded steps"),
    ([("points", 11, 10), ("points", 11, 10)], True, "mean over all 10 steps"),
    ([("points", 11, 3), ("points", 11, 7)], False, "mean over all recorded steps (fewer than 11 in every run)"),
    ([("points", 11, 1)], False, "value at the only recorded step"),
    ([("points", 11, 5), ("points", 11, 40)], True, "11-point mean (all steps if fewer)"),
    ([("points", 11, 0), ("points", 11, 40)], False, "mean over 11 evenly spaced recorded steps"),  # 0: no value
    ([("points", 5, 5), ("mean", 11, 3), ("mean", 5, 3)], False,
     "mean over 5 evenly spaced recorded steps; mean over all recorded steps"),
], ids=["all-ten", "all-ten-short", "all-fewer-mixed", "one-step", "some-fewer-short", "no-steps", "mixed-summaries"])
def test_bug_summary_words_are_true_of_every_run(runs: list[tuple[str, int, int]], short: bool, words: str) -> None:
    from gfprobe.summary import describe_runs

    assert describe_runs(runs, short=short) == words


def test_bug_scatter_axis_says_how_many_steps_were_averaged(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gfprobe.analysis.report import build_report
    from gfprobe.render.plots import plot_scatter

    runs = build_report(_runs_with_steps(tmp_path, [10] * 4))
    svg = plot_scatter(runs, tmp_path / "s.svg", metric="acc").read_text()
    assert "mean over all 10 steps" in svg and "11-point" not in svg


# -- item 4: too few runs for a bootstrap interval --------------------------------------------

def test_bug_few_runs_print_no_nan_interval_and_no_warning(tmp_path: Path) -> None:
    paths = _plain_runs(tmp_path, MIN_INTERVAL_RUNS - 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = invoke(["report", *paths, "--correlate", "acc"])
        md = invoke(["report", *paths, "--correlate", "acc", "--format", "markdown"])
    assert not caught, [str(w.message) for w in caught]
    for out in (table.output, md.output):
        assert "nan" not in out and "Warning" not in out
        assert f"no interval: it needs at least {MIN_INTERVAL_RUNS} runs" in out
    rows = json.loads(invoke(["report", *paths, "--correlate", "acc", "--format", "json"]).stdout)["correlation"]
    assert all(row["ci"] == [None, None] for row in rows)


def test_five_runs_get_an_interval_without_warnings(tmp_path: Path) -> None:
    paths = _plain_runs(tmp_path, MIN_INTERVAL_RUNS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's DegenerateDataWarning must not escape
        result = invoke(["report", *paths, "--correlate", "acc", "--format", "json"])
    rows = json.loads(result.stdout)["correlation"]
    enough = [row for row in rows if row["n"] >= MIN_INTERVAL_RUNS and row["coef"] is not None]
    assert enough and all(row["ci"][0] is not None for row in enough)


# -- item 5: tables at 80 columns ------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("narrow")
    attrs = [{"optimizer": opt, "regularisation": reg, "pair_density": density, "sparse": sparse, "seed": seed}
             for opt in ("sgd", "adam") for reg in ("NR", "BN") for density in (0.25, 0.5)
             for sparse in (True, False) for seed in range(2)]
    return _plain_runs(folder, len(attrs), attrs)


@pytest.mark.parametrize("env", [{"GFPROBE_WIDTH": "80"}, {"COLUMNS": "80"}], ids=["GFPROBE_WIDTH", "COLUMNS"])
def test_bug_headers_never_split_mid_word_at_80_columns(study: list[str], env: dict[str, str]) -> None:
    args = ["report", *study, "--runs", "--per-layer", "--scsdc", "--scsdc-metric", "acc", "--correlate", "acc",
            "--correlate", "x", "--resamples", "50"]
    result = CliRunner().invoke(main, args, env={"NO_COLOR": "1", "GFPROBE_WIDTH": "", **env})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    words = " ".join(lines).split()
    assert "regularisation" in words and "regularisati" not in words
    assert "egf_1_per_weight" in words  # the correlation's row labels are whole
    data = json.loads(invoke([*args, "--format", "json"]).stdout)
    for row in data["correlation"]:  # every interval printed whole, on one line
        if row["ci"][0] is not None:
            assert f"[{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]" in result.stdout
    for run in data["runs"]:
        assert f"{run['measures']['egf_2']:.4g}" in words


# -- attribute values that are JSON lists or tables ------------------------------------------

def _tabled_runs(folder: Path, key: str, values: Sequence[object], **attrs: object) -> list[str]:
    """A sparse and a dense run, two seeds each, per value of the attribute ``key``."""
    grid = [{key: value, "sparse": sparse, "seed": seed, **attrs}
            for value in values for sparse in (True, False) for seed in (0, 1)]
    return _plain_runs(folder, len(grid), grid)


def test_bug_report_by_a_list_or_table_attribute_groups_the_runs(tmp_path: Path) -> None:
    # The same table in two key orders is one value; a list of lists is another.
    paths = _tabled_runs(tmp_path, "density", [[[0.1]], {"b": 2, "a": 1}, {"a": 1, "b": 2}])
    args = ["report", *paths, "--correlate", "acc", "--by", "density", "--resamples", "50"]
    table = invoke(args)
    assert table.exit_code == 0 and "Traceback" not in table.output
    md = invoke([*args, "--format", "markdown"]).stdout  # titles unwrapped: shown as JSON, not as tuples
    assert r"(density = \[\[0.1\]\])" in md and '(density = {"a": 1, "b": 2})' in md
    rows = json.loads(invoke([*args, "--format", "json"]).stdout)["correlation"]
    sizes = {json.dumps(row["split"]["density"]): row["n"] for row in rows if row["group"] == "all"}
    assert sizes == {"[[0.1]]": 4, '{"a": 1, "b": 2}': 8}
    assert '"{""a"": 1, ""b"": 2}",all,' in invoke([*args, "--format", "csv"]).stdout


def test_bug_scsdc_pivot_of_a_table_attribute(tmp_path: Path) -> None:
    # Sparse and dense runs spell the optimizer's table in different key orders: still one configuration.
    paths = _tabled_runs(tmp_path, "regularisation", ["NR", "BN"], optimizer={"lr": 0.1, "name": "sgd"})
    for path in paths[1::2]:
        with h5py.File(path, "a") as handle:  # reversed keys in half of the runs (attributes are JSON text)
            handle["attrs"].attrs["optimizer"] = json.dumps({"name": "sgd", "lr": 0.1})
    args = ["report", *paths, "--scsdc", "--scsdc-metric", "acc"]
    result = invoke(args)
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "optimizer × regularisation" in result.stdout
    assert any(line.split()[:2] == ["{\"lr\":", "0.1,"] for line in result.stdout.splitlines()), result.stdout
    comparisons = json.loads(invoke([*args, "--format", "json"]).stdout)["scsdc"]
    assert len(comparisons) == 2 and not any(c.get("note") for c in comparisons)
    assert all(c["config"]["optimizer"] == {"lr": 0.1, "name": "sgd"} for c in comparisons)


def test_bug_scsdc_plot_of_a_table_attribute(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # The configurations differ only by a table: the x axis, which has no order of its own.
    paths = _tabled_runs(tmp_path, "optimizer", [{"name": "sgd"}, {"name": "adam"}, [["x"]]])
    result = invoke(["plot", *paths, "--kind", "scsdc", "--metric", "acc", "--out", str(tmp_path / "p.svg")])
    assert result.exit_code == 0 and (tmp_path / "p.svg").is_file(), result.output


# -- the study name in scsdc run's progress bar ----------------------------------------------

def test_bug_study_name_in_the_progress_bar_is_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gfprobe.study import runner

    def fake_study(study: Any, out: Path, options: Any, on_start: Any, on_run: Any) -> runner.StudyOutcome:
        on_start(0, len(study))
        for spec in study.runs:
            on_run(spec, None)
        return runner.StudyOutcome()

    monkeypatch.setattr(runner, "check_study", lambda study, options: None)
    monkeypatch.setattr(runner, "run_study", fake_study)
    name = "[/][/]" + MARKUP + "\x1b]0;pwned\x07"
    config = tmp_path / "study.toml"
    config.write_text(f"[study]\nname = {json.dumps(name)}\n[[grid]]\ndensity = 0.5\n")
    # A terminal, as far as rich can tell: the progress bar, not the log lines.
    result = CliRunner().invoke(main, ["scsdc", "run", "--config", str(config), "--out", str(tmp_path / "out")],
                                env={"TTY_COMPATIBLE": "1", "FORCE_COLOR": "1", "GFPROBE_WIDTH": "200"})
    assert result.exit_code == 0 and result.exception is None, result.output
    assert f"{printable(name)}: training" in result.stdout  # shown as written, escapes made visible
    assert "\x1b]" not in result.stdout and "\x07" not in result.stdout  # no hyperlink, no window title
