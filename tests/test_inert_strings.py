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

import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from gfprobe.analysis.correlation import MIN_INTERVAL_RUNS
from gfprobe.cli import main
from gfprobe.render.safe import markdown, printable
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
]
MARKUP = "[link=http://evil]x[/link]"


def write_run(path: Path, hostile: str, attrs: Mapping[str, object], acc: float, l2: float = 1.0) -> Path:
    """A run with ``hostile`` in every string the file holds; its first layer has a NaN, so
    ``check`` fails and names that layer."""
    params = [ParamInfo(f"{hostile}.weight", (4, 4), "weight", hostile, "explicit"),
              ParamInfo(f"fc2{hostile}.weight", (2, 4), "weight", f"Linear{hostile}"),
              ParamInfo(f"fc2{hostile}.bias", (2,), hostile[:6], "Linear")]
    block = np.zeros((STEPS, len(STAT_FIELDS), len(params)))
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
    writer.append_steps(StepBlock(0, np.arange(STEPS), np.arange(STEPS) * 0.1, np.zeros(STEPS, np.uint8), block))
    writer.append_metrics([("acc", STEPS, 1.0, acc), (hostile, STEPS, 1.0, 0.5)])
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


def _check_output(args: Sequence[str], result: Result, junit: Path) -> None:
    for stream in (result.stdout, result.stderr):
        assert _bad_characters(stream) == [], (args, stream)
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
    path = hostile_runs[-1]
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
def test_printable_ascii_passes_unchanged(value: str) -> None:
    assert printable(value) == value


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
    assert f"Gradient flow: {words}" in table and ("11 evenly" in table) == (how == "points")
    assert f"**Gradient flow: {words}**" in invoke(["report", *paths, "--summary", how, "--format", "markdown"]).stdout
    runs = json.loads(invoke(["report", *paths, "--summary", how, "--format", "json"]).stdout)["runs"]
    assert all(run["summary"]["how"] == how for run in runs)


def test_bug_scatter_axis_names_the_summary_used(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gfprobe.analysis.report import build_report
    from gfprobe.render.plots import plot_scatter

    runs = build_report(_plain_runs(tmp_path, 4), how="max")
    svg = plot_scatter(runs, tmp_path / "s.svg", metric="acc").read_text()
    assert "max over steps" in svg and "11-point" not in svg


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
