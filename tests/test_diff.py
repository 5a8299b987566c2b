"""``gfprobe diff BASE NEW``: real recorded runs of one tiny training script, changed one way per run
(the same seed twice, another thread count, one layer's init ×10, fewer steps, ``--every 2``, an
extra layer), compared in every output format; folders matched by run id; bad input; hostile names."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import child_env
from test_inert_strings import HOSTILE, MARKUP, _bad_characters, _check_output, write_run

from gfprobe.analysis.diff import log_gaps, relative_gaps, summary_gap
from gfprobe.analysis.diff_config import RULES
from gfprobe.cli import main

# Layer 0 feeds a LayerNorm, which undoes any scale of its output: scaling layer 0's init changes
# layer 0's own gradient at once (×1/10) and, through the different updates that follow, the other
# layers' only some steps later. So exactly one layer diverges first, and the test can say which.
SCRIPT = """
import argparse
import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
p.add_argument("--scale", type=float, default=1.0, help="layer 0's init times this")
p.add_argument("--spare", action="store_true", help="an unused layer in the optimizer: in this run only")
args = p.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                      nn.Linear(32, 4))
with torch.no_grad():
    model[0].weight.mul_(args.scale)
x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
params = list(model.parameters())
if args.spare:  # made after the data, so that the other layers start and train as in every other run
    params += list(nn.Linear(16, 8).parameters())
opt = torch.optim.SGD(params, lr=0.1)
for step in range(args.steps):
    index = torch.arange(step * 32, step * 32 + 32) % 256
    loss = nn.functional.cross_entropy(model(x[index]), y[index])
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"loss={loss.item():.6f}", flush=True)
"""
# name -> (script options, gfprobe record options, environment)
RUNS: dict[str, tuple[list[str], list[str], dict[str, str]]] = {
    "base": ([], [], {}),
    "again": ([], [], {}),  # the same seed twice
    "threads": ([], [], {"OMP_NUM_THREADS": "2"}),  # and on another thread count
    "scaled": (["--scale", "10"], [], {}),
    "short": (["--steps", "25"], [], {}),
    "every2": ([], ["--every", "2"], {}),
    "spare": (["--spare"], [], {}),
}
SPARE = "param7"  # what gfprobe calls a parameter of no module of the model (the 8th parameter handed over)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every run of RUNS, recorded by ``gfprobe record`` side by side (each its own process)."""
    folder = tmp_path_factory.mktemp("diff-runs")
    script = folder / "train.py"
    script.write_text(SCRIPT)
    started = {}
    for name, (args, options, env) in RUNS.items():
        command = [sys.executable, "-m", "gfprobe", "record", "--out", str(folder / f"{name}.h5"),
                   "--metric", "loss=loss=([0-9.]+)", *options, "--", sys.executable, str(script), *args]
        started[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=child_env(**env), cwd=folder)
    for name, process in started.items():
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, (name, err)
    return {name: folder / f"{name}.h5" for name in RUNS}


def diff(*args: str, width: int = 120) -> Result:
    return CliRunner().invoke(main, ["diff", *args], env={"NO_COLOR": "1", "GFPROBE_WIDTH": str(width)})


def diff_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = diff(*args, "--format", "json")
    return result.exit_code, json.loads(result.stdout)


def results(pair: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in pair["results"]}


# -- the issue's three cases ----------------------------------------------------------------------

def test_same_seed_twice_is_bit_identical_and_passes(runs: dict[str, Path]) -> None:
    code, out = diff_json(str(runs["base"]), str(runs["again"]))
    assert code == 0 and out["passed"] is True
    pair = out["runs"][0]
    assert [r["rule"] for r in pair["results"]] == [r for r in RULES if r != "unmatched"]
    assert all(r["status"] == "pass" for r in pair["results"]), pair["results"]
    assert [layer["max_abs_log_ratio"] for layer in pair["layers"]] == [0.0, 0.0, 0.0]  # bit-identical
    assert all(m["abs_log_ratio"] == 0.0 for m in pair["measures"]) and pair["metrics"][0]["max_rel_diff"] == 0.0
    assert "identical" in results(pair)["layers"]["message"] and pair["notes"] == []
    table = diff(str(runs["base"]), str(runs["again"])).output
    assert "first step beyond" in table  # the layer table keeps its columns when nothing differs


def test_another_thread_count_passes_the_default_tolerance(runs: dict[str, Path]) -> None:
    code, out = diff_json(str(runs["base"]), str(runs["threads"]))
    assert code == 0, out
    assert all(layer["max_abs_log_ratio"] < 1e-5 for layer in out["runs"][0]["layers"])  # float32 reordering, at most


def test_one_layers_init_scaled_fails_naming_that_layer_first(runs: dict[str, Path]) -> None:
    code, out = diff_json(str(runs["base"]), str(runs["scaled"]))
    assert code == 1 and out["passed"] is False
    pair = out["runs"][0]
    layers = results(pair)["layers"]
    assert layers["status"] == "fail" and layers["layer"] == "0.weight" and layers["step"] == 0
    assert "first 0.weight at step 0" in layers["message"]
    first = {layer["name"]: layer["first_step"] for layer in pair["layers"]}
    assert first["0.weight"] == 0 and all(step is None or step > 0 for name, step in first.items()
                                          if name != "0.weight")
    at_zero = next(layer for layer in pair["layers"] if layer["name"] == "0.weight")
    assert at_zero["first_new"] == pytest.approx(at_zero["first_base"] / 10, rel=1e-3)  # the LayerNorm undoes ×10
    assert results(pair)["structure"]["status"] == "pass"
    table = diff(str(runs["base"]), str(runs["scaled"]))
    assert table.exit_code == 1 and "scaled: 3 rules fail" in table.output
    assert "first 0.weight at step 0" in table.output


def test_the_python_api_gives_the_same_verdict(runs: dict[str, Path]) -> None:
    import gfprobe.api as gf

    same, changed = gf.diff(runs["base"], runs["again"]), gf.diff(runs["base"], runs["scaled"])
    assert same.passed and not changed.passed
    (pair,) = changed.pairs
    first = min((t for t in pair.layers if t.first_step is not None), key=lambda t: t.first_step or 0)
    assert (first.name, first.first_step) == ("0.weight", 0)


@pytest.mark.parametrize(("other", "steps", "span"), [("short", 25, (0, 24)), ("every2", 20, (0, 38))],
                         ids=["fewer-steps", "every-2"])
def test_different_steps_are_aligned_on_the_common_ones_and_said_so(runs: dict[str, Path], other: str, steps: int,
                                                                   span: tuple[int, int]) -> None:
    code, out = diff_json(str(runs["base"]), str(runs[other]))
    assert code == 0, out
    aligned = out["runs"][0]["aligned"]
    assert (aligned["steps"], aligned["first"], aligned["last"]) == (steps, *span)
    assert aligned["partial"] is True and aligned["base_steps"] == 40 and aligned["new_steps"] == steps
    note = f"aligned on the {steps} steps both runs recorded (steps {span[0]}–{span[1]}); BASE recorded 40, NEW {steps}"
    assert aligned["note"].startswith(note) and out["runs"][0]["notes"] == [aligned["note"]]
    assert f"note: {note}" in diff(str(runs["base"]), str(runs[other])).output
    assert f"> note: {note}" in diff(str(runs["base"]), str(runs[other]), "--format", "markdown").output
    github = diff(str(runs["base"]), str(runs[other]), "--format", "github").output.splitlines()
    assert github[0].startswith(f"::notice file={runs[other]},title=gfprobe diff::{note}")


def test_a_layer_in_one_run_only_is_listed_and_fails_structure(runs: dict[str, Path], tmp_path: Path) -> None:
    code, out = diff_json(str(runs["base"]), str(runs["spare"]))
    pair = out["runs"][0]
    assert code == 1 and pair["only_in_new"] == [SPARE] and pair["only_in_base"] == []
    assert results(pair)["structure"]["status"] == "fail" and results(pair)["structure"]["layer"] == SPARE
    assert f"in NEW only: {SPARE}" in results(pair)["structure"]["message"]
    assert results(pair)["layers"]["status"] == "pass"  # the layers both runs have are untouched
    assert results(pair)["measures"]["status"] == "fail"  # EGF averages over the layers, the spare one too
    config = tmp_path / "diff.toml"
    config.write_text("structure = { enabled = false }\nmeasures = { enabled = false }\n")
    code, out = diff_json(str(runs["base"]), str(runs["spare"]), "--config", str(config))
    assert code == 0 and out["runs"][0]["only_in_new"] == [SPARE]  # switched off: still listed


# -- folders --------------------------------------------------------------------------------------

def _folders(tmp_path: Path, runs: dict[str, Path], pairs: dict[str, tuple[str | None, str | None]]) -> list[str]:
    """BASE and NEW folders holding, per run id, copies of the runs named (None: absent on that side)."""
    folders = [tmp_path / "base", tmp_path / "new"]
    for run_id, sides in pairs.items():
        for folder, name in zip(folders, sides, strict=True):
            if name is not None:
                (folder / run_id).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(runs[name], folder / f"{run_id}.h5")
    return [str(f) for f in folders]


def test_folders_are_matched_by_run_id(runs: dict[str, Path], tmp_path: Path) -> None:
    base, new = _folders(tmp_path, runs, {"runs/a": ("base", "again"), "runs/b": ("base", "scaled"),
                                          "old": ("base", None), "fresh": (None, "base")})
    code, out = diff_json(base, new)
    assert code == 1
    assert [(r["id"], r["passed"]) for r in out["runs"]] == [("runs/a", True), ("runs/b", False)]
    assert out["runs"][1]["new"] == str(Path(new) / "runs" / "b.h5")
    assert [r["id"] for r in out["unmatched"]["base_only"]] == ["old"]
    assert [r["id"] for r in out["unmatched"]["new_only"]] == ["fresh"]
    table = diff(base, new).output
    assert "runs/a: no difference beyond the tolerances" in table and "runs/b: 3 rules fail" in table
    assert "runs without a partner of the same id: FAIL" in table
    rows = [line.split() for line in table.splitlines()]
    assert ["old", "BASE", str(Path(base) / "old.h5")] in rows and ["fresh", "NEW", str(Path(new) / "fresh.h5")] in rows


def test_folders_with_no_run_id_in_common_are_bad_input(runs: dict[str, Path], tmp_path: Path) -> None:
    """A gate that compared nothing must not pass, even with ``unmatched`` switched off."""
    base, new = _folders(tmp_path, runs, {"old": ("base", None), "fresh": (None, "base")})
    config = tmp_path / "diff.toml"
    config.write_text("[tool.gfprobe.diff]\nunmatched = { enabled = false }\n")
    result = diff(base, new, "--config", str(config))
    assert result.exit_code == 2
    assert result.output.strip() == (f"gfprobe: {base} and {new} have no run id in common (1 and 1 runs): nothing "
                                     "to compare; pass two folders of the same runs")
    plotted = CliRunner().invoke(main, ["plot", base, new, "--kind", "diff", "--out", str(tmp_path / "d.png")])
    assert plotted.exit_code == 2 and "no run id in common" in plotted.output


def test_runs_in_one_folder_only_fail_unless_switched_off(runs: dict[str, Path], tmp_path: Path) -> None:
    base, new = _folders(tmp_path, runs, {"a": ("base", "again"), "old": ("base", None)})
    assert diff(base, new).exit_code == 1
    config = tmp_path / "diff.toml"
    config.write_text("[tool.gfprobe.diff]\nunmatched = { enabled = false }\n")
    code, out = diff_json(base, new, "--config", str(config))
    assert code == 0 and out["unmatched"]["fails"] is False and out["unmatched"]["base_only"][0]["id"] == "old"


def test_an_unreadable_run_in_a_folder_is_listed_and_the_others_compared(runs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    base, new = _folders(tmp_path, runs, {"a": ("base", "again"), "b": ("base", "base")})
    (Path(new) / "b.h5").write_text("not hdf5")
    result = diff(base, new, "--format", "json")
    assert result.exit_code == 2
    assert [r["id"] for r in json.loads(result.stdout)["runs"]] == ["a"]
    import gfprobe.api as gf

    assert not gf.diff(base, new).passed  # a pair left out unread is no pass
    assert result.stderr.strip() == f"gfprobe: {Path(new) / 'b.h5'}: not an HDF5 file (truncated or another " \
                                    "format); pass a gfprobe run file"


# -- configuration --------------------------------------------------------------------------------

def test_pyproject_in_the_working_directory_sets_the_tolerances(runs: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.gfprobe.check]\n'
                                             "dead = { enabled = false }\n\n[tool.gfprobe.diff]\n"
                                             "layers = { rtol = 20.0 }\nmeasures = { rtol = 1.0 }\n"
                                             "metrics = { rtol = 1.0 }\n")
    monkeypatch.chdir(tmp_path)
    code, out = diff_json(str(runs["base"]), str(runs["scaled"]))  # ×0.1 is within a factor of 21
    assert code == 0, out
    assert "within a factor 21" in results(out["runs"][0])["layers"]["message"]


def test_a_config_file_with_only_checks_table_gives_diffs_defaults(runs: dict[str, Path], tmp_path: Path) -> None:
    """A --config file holding ``[tool.gfprobe.check]`` only (one file for the CI's gates) is not
    read as a diff table itself."""
    gates = tmp_path / "gates.toml"
    gates.write_text("[tool.gfprobe.check]\ndead = { enabled = false }\n")
    code, out = diff_json(str(runs["base"]), str(runs["again"]), "--config", str(gates))
    assert code == 0 and out["passed"] is True


@pytest.mark.parametrize(("text", "fragment"), [
    ("[layer]\nrtol = 0.1\n", "unknown diff rule 'layer' (did you mean 'layers'?)"),
    ("[layers]\nrtl = 0.1\n", "rule layers has no setting 'rtl' (did you mean 'rtol'?)"),
    ("[layers]\nrtol = -1\n", "layers.rtol = -1 must not be negative"),
    ("[metrics]\nrtol = nan\n", "must be a finite number"),
    ("[structure]\nenabled = 1\n", "structure.enabled = 1 must be true or false"),
    ("[tool.gfprobe]\ndiff = 3\n", "tool.gfprobe.diff must be a table, got int 3; write the settings as "
                                   "[tool.gfprobe.diff] with one table per rule, e.g. layers = { rtol = 0.05 }"),
], ids=["rule", "setting", "negative", "nan", "bool", "not-a-table"])
def test_bad_configuration_is_exit_2_naming_it(runs: dict[str, Path], tmp_path: Path, text: str,
                                               fragment: str) -> None:
    config = tmp_path / "diff.toml"
    config.write_text(text)
    result = diff(str(runs["base"]), str(runs["again"]), "--config", str(config))
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "text", "folder-and-file", "stream", "plot-type", "junit-under-a-file"])
def test_bad_input_is_exit_2_in_one_line(runs: dict[str, Path], tmp_path: Path, case: str) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not a run")
    args, fragment = {
        "missing": ([str(tmp_path / "gone.h5"), str(runs["base"])], "gone.h5: no such file or folder; pass BASE"),
        "text": ([str(runs["base"]), str(text)], "notes.h5: not an HDF5 file"),
        "folder-and-file": ([str(runs["base"].parent), str(runs["base"])],
                            "is a folder but " + str(runs["base"]) + " is not; give two run files or two folders"),
        "stream": ([str(runs["base"]), str(runs["again"]), "--stream", "3"], "has no optimizer stream 3"),
        "plot-type": ([str(runs["base"]), str(runs["again"]), "--plot", str(tmp_path / "p.jpg")],
                      "--plot " + str(tmp_path / "p.jpg") + ": unsupported image type '.jpg'; use .png or .svg"),
        "junit-under-a-file": ([str(runs["base"]), str(runs["again"]), "--junit", str(text / "j.xml")],
                               "is a file, not a folder; give a path under a folder"),
    }[case]
    result = diff(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert fragment in result.output, result.output
    lines = result.output.strip().splitlines()
    assert all(line.startswith("gfprobe: ") for line in lines)
    assert len(lines) == (2 if case == "stream" else 1)  # a stream missing from both files: a line for each


# -- output formats -------------------------------------------------------------------------------

def test_markdown_for_a_pull_request_comment(runs: dict[str, Path]) -> None:
    result = diff(str(runs["base"]), str(runs["scaled"]), "--format", "markdown")
    assert result.exit_code == 1
    text = result.output
    assert text.startswith("**gfprobe diff: failed**\n\n### scaled: 3 rules fail\n")
    assert ("| layers | **FAIL** | 3 of 3 weight layers differ by more than a factor 1.01: first 0.weight at step 0"
            in text)
    row = next(line for line in text.splitlines() if line.startswith("| 0.weight |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "0" and cells[5] == "**DIFFERS**"  # first step beyond, result
    assert "| weight layer | NEW/BASE | at step | BASE → NEW | first step beyond | result |" in text


def test_github_annotations_and_junit(runs: dict[str, Path], tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "diff.xml"
    result = diff(str(runs["base"]), str(runs["scaled"]), "--format", "github", "--junit", str(junit))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert [line.split("::")[1] for line in lines] == [
        f"error file={runs['scaled']},title=gfprobe diff {rule}" for rule in ("layers", "measures", "metrics")]
    suites = ET.parse(junit).getroot()
    assert suites.get("name") == "gfprobe diff" and suites.get("failures") == "3" and suites.get("tests") == "4"
    cases = {case.get("name"): case for case in suites[0]}
    assert cases["layers"].find("failure") is not None and cases["structure"].find("failure") is None
    passing = diff(str(runs["base"]), str(runs["again"]), "--format", "github").output
    assert passing == f"::notice file={runs['again']},title=gfprobe diff::no difference beyond the tolerances\n"


def test_diff_plot_and_plot_kind_diff_draw_both_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "diff.svg"
    result = diff(str(runs["base"]), str(runs["scaled"]), "--plot", str(out))
    assert result.exit_code == 1 and f"gfprobe: wrote {out}" in result.output
    svg = out.read_text()
    assert "0.weight" in svg and "tolerance (rtol 0.01)" in svg and "BASE solid, NEW dashed" in svg
    again = tmp_path / "plot.png"
    result = CliRunner().invoke(main, ["plot", str(runs["base"]), str(runs["short"]), "--kind", "diff",
                                       "--out", str(again)])
    assert result.exit_code == 0 and again.stat().st_size > 0, result.output
    result = CliRunner().invoke(main, ["plot", str(runs["base"]), "--kind", "diff", "--out", str(again)])
    assert result.exit_code == 2 and "BASE NEW; got 1" in result.output


def test_diff_never_imports_torch(runs: dict[str, Path]) -> None:
    code = ("import sys\nfrom gfprobe.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    print('EXIT', exc.code)\nassert 'torch' not in sys.modules, 'diff imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code, "diff", str(runs["base"]), str(runs["scaled"]), "--format",
                           "json"], capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 0 and "EXIT 1" in done.stdout, done.stderr


# -- strings from files are data ------------------------------------------------------------------

@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_layer_and_metric_names_are_shown_not_obeyed(tmp_path: Path, hostile: str) -> None:
    base = write_run(tmp_path / "base.h5", hostile, {}, acc=0.5)
    new = write_run(tmp_path / f"new{hostile.replace('/', '_')}.h5", hostile, {}, acc=0.6, l2=2.0)
    junit = tmp_path / "junit.xml"
    for output in ("table", "json", "markdown", "github"):
        args = ["diff", str(base), str(new), "--format", output, "--junit", str(junit)]
        result = CliRunner().invoke(main, args, env={"NO_COLOR": "1", "GFPROBE_WIDTH": "400"})
        assert result.exit_code == 1, result.output  # the layers differ ×2
        _check_output(args, result, junit)
        if output == "json":
            pair = json.loads(result.stdout)["runs"][0]
            assert pair["layers"][0]["name"] == f"{hostile}.weight"  # JSON keeps the data exact
        if hostile == MARKUP and output == "table":
            assert f"{MARKUP}.weight" in result.stdout
    narrow = CliRunner().invoke(main, ["diff", str(base), str(new)], env={"NO_COLOR": "1", "GFPROBE_WIDTH": "80"})
    assert _bad_characters(narrow.output) == []


# -- the comparison itself, by hand -----------------------------------------------------------------

@pytest.mark.parametrize(("base", "new", "expected"), [
    (1.0, 1.0, 0.0), (1.0, 10.0, math.log(10)), (10.0, 1.0, math.log(10)), (0.0, 0.0, 0.0), (0.0, 1.0, math.inf),
    (1.0, 0.0, math.inf), (math.nan, math.nan, 0.0), (math.nan, 1.0, math.inf), (math.inf, math.inf, 0.0),
    (math.inf, 1.0, math.inf),
], ids=["equal", "up-10x", "down-10x", "both-zero", "from-zero", "to-zero", "both-nan", "nan-one-side",
        "both-inf", "inf-one-side"])
def test_log_gaps(base: float, new: float, expected: float) -> None:
    assert log_gaps(np.array([base]), np.array([new]))[0] == pytest.approx(expected)


@pytest.mark.parametrize(("base", "new", "rtol", "exceeded"), [
    (2.0, 2.0 * 1.009, 0.01, False), (2.0, 2.0 * 1.011, 0.01, True), (2.0, 2.0 / 1.011, 0.01, True),
    (-2.31, -2.3100001, 0.01, False), (-2.0, -2.1, 0.01, True), (-1.0, 1.0, 0.5, True), (0.0, -0.001, 0.01, True),
], ids=["norm-within", "norm-up", "norm-down", "negative-within", "negative-beyond", "sign", "zero-to-negative"])
def test_summary_gap(base: float, new: float, rtol: float, exceeded: bool) -> None:
    """Norms compare as factors; a measure that is negative in either run (a plugin's) relatively:
    its log would be NaN, which read as infinitely far."""
    gap, beyond = summary_gap(base, new, rtol)
    assert beyond is exceeded and math.isfinite(gap)


@pytest.mark.parametrize(("base", "new", "expected"), [
    (1.0, 1.0, 0.0), (1.0, 1.01, 0.01 / 1.01), (-2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (0.0, 0.5, 1.0),
    (math.nan, 0.5, math.inf), (math.nan, math.nan, 0.0),
], ids=["equal", "one-percent", "sign", "both-zero", "from-zero", "nan-one-side", "both-nan"])
def test_relative_gaps(base: float, new: float, expected: float) -> None:
    assert relative_gaps(np.array([base]), np.array([new]))[0] == pytest.approx(expected)
