"""The CLI through click's CliRunner: exit codes, golden outputs, JSON contract, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Golden

from gfprobe.cli import main
from gfprobe.measures import MEASURES
from gfprobe.summary import protocol_indices

RUNS = Path(__file__).parent.parent / "fixtures" / "runs"
FILES = ["dense.h5", "sparse.h5", "amp.h5"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(RUNS)  # relative paths keep golden files machine-independent
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("GFPROBE_WIDTH", "120")
    return CliRunner()


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("report.txt", ["report", *FILES]),
        ("report-per-layer.txt", ["report", *FILES, "--per-layer"]),
        ("report.json", ["report", *FILES, "--format", "json"]),
        ("report.csv", ["report", *FILES, "--format", "csv"]),
        ("report.md", ["report", *FILES, "--format", "markdown"]),
        ("inspect-amp.txt", ["inspect", "amp.h5"]),
        ("inspect-amp.json", ["inspect", "amp.h5", "--format", "json"]),
    ],
)
def test_golden_output(runner: CliRunner, golden: Golden, name: str, args: list[str]) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    golden(name, result.output)


def test_json_report_contract_and_values(runner: CliRunner) -> None:
    """Recompute the summaries independently from the raw datasets with h5py."""
    import h5py

    result = runner.invoke(main, ["report", *FILES, "--format", "json"])
    runs = json.loads(result.output)["runs"]
    assert [r["path"] for r in runs] == FILES
    for entry in runs:
        assert set(entry) >= {"path", "steps", "layers", "measures", "metrics", "attrs"}
        assert set(entry["measures"]) == set(MEASURES)
        with h5py.File(RUNS / entry["path"], "r") as f:
            kinds = f["params/kind"][:]
            weights = np.flatnonzero(kinds == b"weight")
            keep = f["steps/skipped"][:] == 0
            masked = np.sqrt(f["stats/masked_sumsq"][:][keep][:, weights])
            raw_l1 = f["stats/sum_abs"][:][keep][:, weights].sum(axis=1)
            acc = f["metrics/value"][:][f["metrics/name_id"][:] == 0]
        points = protocol_indices(int(keep.sum()))
        assert entry["steps"] == int(keep.sum())
        assert entry["layers"] == len(weights)
        assert entry["measures"]["egf_2"] == pytest.approx(masked.mean(axis=1)[points].mean())
        assert entry["measures"]["gf_1"] == pytest.approx(raw_l1[points].mean())
        assert entry["metrics"]["test_acc"] == {"last": pytest.approx(acc[-1]), "best": pytest.approx(acc.max())}
        assert entry["metrics"]["test_loss"]["best"] == pytest.approx(2.0 - acc.max())  # lower is better
    assert runs[2]["skipped"] == 1
    assert runs[1]["attrs"] == {"density": 0.25, "optimizer": "adam", "seed": 2, "sparse": True}


def test_report_accepts_a_folder(runner: CliRunner) -> None:
    result = runner.invoke(main, ["report", ".", "--format", "json"])
    assert result.exit_code == 0
    assert sorted(Path(r["path"]).name for r in json.loads(result.output)["runs"]) == sorted(FILES)


def test_version() -> None:
    from gfprobe import __version__

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    import h5py

    (tmp / "text.h5").write_text("not hdf5")
    truncated = tmp / "truncated.h5"
    truncated.write_bytes((RUNS / "dense.h5").read_bytes()[:6000])
    with h5py.File(tmp / "foreign.h5", "w") as f:
        f["x"] = [1, 2, 3]
    with h5py.File(tmp / "future.h5", "w") as f:
        f.attrs["format"] = "gfprobe-run"
        f.attrs["schema_version"] = 99
    return {
        "missing": (tmp / "missing.h5", "no such file"),
        "text": (tmp / "text.h5", "not an HDF5 file"),
        "truncated": (truncated, "truncated HDF5 file"),
        "foreign": (tmp / "foreign.h5", "not a gfprobe run file"),
        "future": (tmp / "future.h5", "upgrade gfprobe"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "foreign", "future"])
@pytest.mark.parametrize("command", ["report", "inspect"])
def test_bad_run_files_get_one_clear_line(tmp_path: Path, case: str, command: str) -> None:
    path, message = _bad_files(tmp_path)[case]
    result = CliRunner().invoke(main, [command, str(path)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_stream_index_is_a_clear_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["report", "dense.h5", "--stream", "3"])
    assert result.exit_code == 2
    assert "has no optimizer stream 3" in result.output


def test_analysis_commands_never_import_torch(tmp_path: Path) -> None:
    """report, inspect, check, plot, merge and the scsdc subcommands that do not train work where
    torch is not installed: each runs, then torch must still be absent from sys.modules."""
    commands = [["report", *FILES, "--format", "json", "--per-layer"], ["report", *FILES, "--correlate", "test_acc",
                "--scsdc", "--resamples", "0"], ["inspect", "amp.h5"], ["check", *FILES],
                ["plot", "dense.h5", "--out", str(tmp_path / "layers.svg")], ["merge", "dense.h5", "--out",
                str(tmp_path / "merged.h5")], ["scsdc", "plan"], ["scsdc", "presets"]]
    code = ("import json, sys\n"
            "from gfprobe.cli import main\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    try:\n"
            "        main(args)\n"
            "    except SystemExit as exc:\n"
            "        print('EXIT', args[0], exc.code, file=sys.stderr)\n"
            "    assert 'torch' not in sys.modules, f'gfprobe {args[0]} imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True,
                          timeout=300, cwd=RUNS)
    assert done.returncode == 0, done.stderr
    codes = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("EXIT ")]
    assert [c[0] for c in codes] == [c[0] for c in commands]  # every command ran to its end
    assert all(code in ("0", "1") for name, code in codes if name != "merge"), done.stderr
