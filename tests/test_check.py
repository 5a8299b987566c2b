"""``gfprobe check``: for each rule a real recorded run that trips exactly that rule, a healthy run
that passes them all, the output formats, the configuration, and ``record --check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SCRIPTS, child_env

from gfprobe.analysis.check_config import RULES
from gfprobe.cli import main

SCRIPT = str(SCRIPTS / "train_check.py")
# name -> (script options, the one rule that must fail, a fragment of its message)
CASES: dict[str, tuple[list[str], str | None, str]] = {
    "healthy": ([], None, ""),
    "nan": (["--nan-at", "59"], "nonfinite", "NaN/Inf entries in the gradient of 0.weight at step 59"),
    "amp": (["--amp-skips"], "amp_skips", "30 of 60 steps skipped by GradScaler"),
    "vanishing": (["--loss-scale", "1e-12"], "vanishing", "below 1e-08 at 100% of the steps"),
    "collapse": (["--collapse"], "vanishing", "egf_2 collapsed by"),
    "exploding": (["--loss-scale", "1e6", "--lr", "0"], "exploding", "above 10000"),
    "spike": (["--spike-at", "6"], "exploding", "egf_2 jumped"),
    "dead": (["--detached"], "dead", "no gradient (not connected to the loss?)"),
    "imbalance": (["--imbalance"], "imbalance", "(4.weight over 0.weight)"),
    "mask_leak": (["--zero-half"], "mask_leak", "non-zero gradients for masked weights"),
    "masked_grads": (["--zero-half", "--mask-grads"], None, ""),
    "instability": (["--unstable"], "instability", "unstable gradient flow"),
    "overhead": ([], "overhead", "gfprobe's own time"),
}
# The overhead rule sets gfprobe's own time against the step time, which these tiny runs put at
# 10-20%. So that no test's result depends on the machine's load, every case but "overhead"
# checks with that rule's limit at 100%, and "overhead" with it at 0 (any measured cost fails).
LENIENT, STRICT = "[overhead]\nmax_fraction = 1.0\n", "[overhead]\nmax_fraction = 0.0\n"


def record(out: Path, args: list[str], extra: list[str] = (), cwd: Path | None = None  # type: ignore[assignment]
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfprobe", "record", "--out", str(out), "--masks", "zeros", *extra,
                           "--", sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=240,
                          env=child_env(), cwd=cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("check-runs")
    out = {name: folder / f"{name}.h5" for name in CASES}
    # One recording per core at a time: each is mostly a Python and torch start-up.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = dict(zip(CASES, pool.map(lambda name: record(out[name], CASES[name][0], cwd=folder), CASES),
                        strict=True))
    for name, result in done.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    return out


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A --config file that lets gfprobe's own time be anything up to the whole step time."""
    path = tmp_path_factory.mktemp("check-config") / "lenient.toml"
    path.write_text(LENIENT)
    return str(path)


def check_json(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["check", *args, "--format", "json"])
    return result.exit_code, json.loads(result.output)


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_is_tripped_by_its_run_and_only_by_it(runs: dict[str, Path], case: str, tmp_path: Path) -> None:
    _, rule, fragment = CASES[case]
    config = tmp_path / "check.toml"
    config.write_text(STRICT if rule == "overhead" else LENIENT)
    code, out = check_json(str(runs[case]), "--config", str(config))
    results = out["runs"][0]["results"]  # type: ignore[index]
    assert [r["rule"] for r in results] == list(RULES)
    failing = [r for r in results if r["status"] == "fail"]
    if rule is None:
        assert code == 0 and failing == [] and out["passed"] is True
        return
    assert code == 1 and out["passed"] is False
    assert [r["rule"] for r in failing] == [rule], failing
    assert fragment in failing[0]["message"]


def test_failures_name_the_layer_and_step(runs: dict[str, Path]) -> None:
    _, out = check_json(str(runs["nan"]), str(runs["spike"]), str(runs["dead"]))
    by_path = {Path(r["path"]).stem: {x["rule"]: x for x in r["results"]} for r in out["runs"]}  # type: ignore[union-attr]
    assert by_path["nan"]["nonfinite"]["layer"] == "0.weight" and by_path["nan"]["nonfinite"]["step"] == 59
    assert by_path["spike"]["exploding"]["step"] == 6 and by_path["spike"]["exploding"]["value"] > 100
    assert by_path["dead"]["dead"]["layer"] == "weight"  # the unused nn.Linear, a root module of its own


def test_table_junit_and_github_formats(runs: dict[str, Path], lenient: str, tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "gfprobe.xml"
    result = CliRunner().invoke(main, ["check", str(runs["healthy"]), str(runs["dead"]), "--junit", str(junit),
                                       "--config", lenient], env={"NO_COLOR": "1", "GFPROBE_WIDTH": "120"})
    assert result.exit_code == 1
    assert "healthy.h5: all rules pass" in result.output and "dead.h5: 1 rules fail" in result.output
    suites = ET.parse(junit).getroot()
    assert suites.tag == "testsuites" and suites.get("failures") == "1" and suites.get("tests") == str(2 * len(RULES))
    dead_suite = next(s for s in suites if s.get("name", "").endswith("dead.h5"))
    failures = [case.get("name") for case in dead_suite if case.find("failure") is not None]
    assert failures == ["dead"]
    result = CliRunner().invoke(main, ["check", str(runs["healthy"]), str(runs["vanishing"]), "--format", "github",
                                       "--config", lenient])
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"::notice file={runs['healthy']}")
    assert lines[1].startswith(f"::error file={runs['vanishing']},title=gfprobe check vanishing::")


def test_pyproject_in_the_working_directory_configures_the_rules(runs: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.gfprobe.check]\n'
                                             'instability = { max_cv = 50.0 }\nmask_leak = { enabled = false }\n'
                                             'overhead = { max_fraction = 1.0 }\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found from the working directory upwards
    code, out = check_json(str(runs["instability"]), str(runs["mask_leak"]))
    assert code == 0, out
    results = {Path(r["path"]).stem: {x["rule"]: x["status"] for x in r["results"]}  # type: ignore[union-attr]
               for r in out["runs"]}  # type: ignore[union-attr]
    assert results["instability"]["instability"] == "pass" and results["mask_leak"]["mask_leak"] == "skip"


def test_config_file_option(runs: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "check.toml"
    config.write_text("[vanishing]\nthreshold = 1e-14\ncollapse_orders = 10\n" + LENIENT)
    code, out = check_json(str(runs["vanishing"]), str(runs["collapse"]), "--config", str(config))
    assert code == 0, out


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[vanshing]\nthreshold = 1e-9\n", "unknown check rule 'vanshing' (did you mean 'vanishing'?)"),
        ("[vanishing]\nthreshhold = 1e-9\n", "rule vanishing has no setting 'threshhold' (did you mean 'threshold'?)"),
        ('[exploding]\nthreshold = "big"\n', "exploding.threshold = 'big' must be a number"),
        ("[dead]\nenabled = 1\n", "dead.enabled = 1 must be true or false"),
        ("[imbalance]\nmax_ratio = -2\n", "must not be negative"),
        ("[tool.gfprobe.check]\nnonfinite = true\n", "rule nonfinite must be a table"),
        ("vanishing = [\n", "not valid TOML"),
    ],
)
def test_bad_configuration_is_exit_2_naming_it(runs: dict[str, Path], tmp_path: Path, text: str, fragment: str
                                               ) -> None:
    config = tmp_path / "check.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["check", str(runs["healthy"]), "--config", str(config)])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_unreadable_run_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.h5").write_text("not hdf5")
    result = CliRunner().invoke(main, ["check", str(tmp_path / "bad.h5")])
    assert result.exit_code == 2 and "not an HDF5 file" in result.output


def test_record_then_check_in_one_step(lenient: str, tmp_path: Path) -> None:
    healthy = record(tmp_path / "ok.h5", [], ["--check", "--config", lenient])
    assert healthy.returncode == 0, healthy.stderr
    assert "ok.h5: all rules pass" in healthy.stdout
    failing = record(tmp_path / "dead.h5", ["--detached"], ["--check", "--config", lenient])
    assert failing.returncode == 1 and "dead.h5: 1 rules fail" in failing.stdout


def test_record_check_a_failing_command_keeps_its_exit_code(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gfprobe", "record", "--out", str(tmp_path / "r.h5"), "--check",
                           "--", sys.executable, str(SCRIPTS / "train_mlp.py"), "--steps", "20", "--crash-at", "7"],
                          capture_output=True, text=True, timeout=240, env=child_env())
    assert done.returncode == 1 and "crash requested" in done.stderr
    assert "rules" not in done.stdout  # no check of a crashed run: its own exit code wins


def test_record_check_with_a_bad_config_runs_nothing(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[nope]\n")
    marker = tmp_path / "ran"
    done = subprocess.run([sys.executable, "-m", "gfprobe", "record", "--out", str(tmp_path / "r.h5"), "--check",
                           "--config", str(config), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 2 and "unknown check rule 'nope'" in done.stderr
    assert not marker.exists()
