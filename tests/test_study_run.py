"""``gfprobe scsdc``: real studies trained end to end, resumed, interrupted, run in parallel, and
refused before training when the input is bad."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIXTURES, Golden, child_env

from gfprobe.cli import main
from gfprobe.store.reader import open_run
from gfprobe.study import capacity, names
from gfprobe.study.runner import is_done

TINY = """
[study]
name = "tiny"
epochs = 2
eval_every = 1

[[grid]]
dataset = "mnist1d"
sparse_width = 32
density = 0.25
optimizer = "adam"
regularisation = {regularisation}
seed = {seed}
"""
REQUIRED_ATTRS = {"sparse", "density", "width", "arch", "optimizer", "lr", "regularisation", "activation",
                  "dataset", "seed"}


def write_config(tmp_path: Path, regularisation: str = '"NR"', seed: str = "0", text: str = TINY) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text.format(regularisation=regularisation, seed=seed))
    return path


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["scsdc", *args])
    return result.exit_code, result.output


def runs_in(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*.h5"))


def test_a_study_trains_both_members_of_each_pair_and_records_what_the_report_needs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_cli("run", "--config", str(write_config(tmp_path)), "--out", str(out))
    assert code == 0, output
    assert "2 of 2 runs done (2 trained now)" in output
    sparse_file, = (p for p in runs_in(out) if "-sparse-" in p.name)
    dense_file, = (p for p in runs_in(out) if "-dense-" in p.name)
    plan = capacity.plan_pair("mlp", names.DATASETS["mnist1d"], 32, 0.25, 2)
    for path, sparse in ((sparse_file, True), (dense_file, False)):
        with open_run(path) as run:
            attrs, stream, metrics = run.attrs, run.stream(0), run.metrics()
            assert run.metadata["status"] == "complete"
        assert set(attrs) >= REQUIRED_ATTRS
        assert attrs["sparse"] is sparse and attrs["active_weights"] == plan.dense_active_total
        assert attrs["width"] == (32 if sparse else plan.dense_width)
        assert metrics["test_acc"].values.size == 2 and metrics["test_loss"].values.size == 2
        weights = [i for i, kind in enumerate(stream.params.kinds) if kind == "weight"]
        # Capacity matching holds in what was recorded: active weights per layer equal the plan.
        active = stream.stats["active"][0, weights].tolist()
        assert active == [layer.dense_active for layer in plan.layers]
        if sparse:
            # The raw gradient of masked weights is recorded, and is not zero: gf_p ≠ masked norms.
            assert (stream.stats["sumsq"][:, weights] > stream.stats["masked_sumsq"][:, weights]).all()
            assert set(stream.params.mask_sources[i] for i in weights) == {"explicit"}
    assert "SC-SDC: test_acc" in output and "Kendall" in output  # the report follows the training
    assert (out / "plots" / "scsdc.png").exists() and (out / "plots" / "scatter.png").exists()


def test_rerunning_skips_finished_runs_and_redoes_unfinished_ones(tmp_path: Path) -> None:
    out, config = tmp_path / "out", write_config(tmp_path, seed="[0, 1]")
    assert run_cli("run", "--config", str(config), "--out", str(out), "--no-report")[0] == 0
    files = runs_in(out)
    assert len(files) == 4 and all(is_done(p) for p in files)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    code, output = run_cli("run", "--config", str(config), "--out", str(out), "--no-report")
    assert code == 0 and "4 of 4 runs done (0 trained now)" in output
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    with h5py.File(files[1], "r+") as f:  # as if that run had been interrupted
        f.attrs["status"] = "interrupted"
    files[2].write_bytes(files[2].read_bytes()[:5000])  # as if killed while writing
    code, output = run_cli("run", "--config", str(config), "--out", str(out), "--no-report")
    assert code == 0 and "4 of 4 runs done (2 trained now)" in output
    assert all(is_done(p) for p in files)
    assert [p for p in files if p.stat().st_mtime_ns != stamps[p]] == [files[1], files[2]]


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gfprobe.study import train

    real = train.train_run

    def fail_seed_1(spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        if spec.seed == 1 and spec.sparse:
            raise RuntimeError("injected failure")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_run", fail_seed_1)
    out, config = tmp_path / "out", write_config(tmp_path, seed="[0, 1]")
    code, output = run_cli("run", "--config", str(config), "--out", str(out), "--no-report")
    assert code == 1
    assert "failed: RuntimeError: injected failure" in output and "-sparse-" in output
    assert "1 runs failed; fix the cause and rerun" in output
    assert len([p for p in runs_in(out) if is_done(p)]) == 3
    monkeypatch.setattr(train, "train_run", real)
    code, output = run_cli("run", "--config", str(config), "--out", str(out), "--no-report")
    assert code == 0 and "4 of 4 runs done (1 trained now)" in output


def test_parallel_jobs_and_torchvision_data_with_the_cnn(tmp_path: Path) -> None:
    """Two worker processes; Fashion-MNIST read by torchvision from fixture files; the CNN with
    data augmentation, BatchNorm and skip connections."""
    config = tmp_path / "cnn.toml"
    config.write_text('[study]\nepochs = 1\n[[grid]]\ndataset = "fashion-mnist"\narch = "cnn"\nsparse_width = 8\n'
                      'density = [0.5, 1.0]\noptimizer = "momentum"\nlr = 0.01\nregularisation = "DA_SC_BN"\n'
                      'activation = ["prelu", "srelu"]\n')
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gfprobe", "scsdc", "run", "--config", str(config), "--out", str(out),
                           "--jobs", "2", "--data-root", str(FIXTURES / "datasets"), "--no-report"],
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr
    files = runs_in(out)
    assert len(files) == 6 and all(is_done(p) for p in files)  # density 1.0 has no sparse member
    with open_run(files[0]) as run:
        assert run.attrs["dataset"] == "fashion-mnist" and run.attrs["arch"] == "cnn"
        assert run.stream(0).params.names[0] == "conv1.weight"


def test_an_interrupted_study_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, seed="[0, 1, 2, 3, 4, 5]")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 20"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gfprobe", "scsdc", "run", "--config", str(config), "--out", str(out),
               "--no-report"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(is_done(p) for p in runs_in(out)) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command" in err and "Traceback" not in err
    finished = [p for p in runs_in(out) if is_done(p)]
    assert 0 < len(finished) < 12
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr
    assert f"12 of 12 runs done ({12 - len(finished)} trained now)" in done.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--out", "X"], "exactly one of --preset NAME or --config FILE"),
        (["run", "--preset", "quick", "--config", "c.toml", "--out", "X"], "exactly one of"),
        (["run", "--preset", "huge", "--out", "X"], "'huge' is not one of"),
        (["run", "--config", "missing.toml", "--out", "X"], "no such study file"),
        (["plan", "--densities", "0.1,x"], "expected numbers separated by commas"),
        (["plan", "--densities", "0.1,1.2"], "density"),
        (["plan", "--sparse-width", "8", "--densities", "0.01"], "too small"),
        (["plan", "--arch", "resnet"], "'resnet' is not one of"),
    ],
)
def test_bad_input_is_refused_with_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str], fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = run_cli(*args)
    assert code == 2 and fragment in output and "Traceback" not in output
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize(
    ("grid", "fragment"),
    [
        ('optimzer = "adam"', "'optimzer' is not known (did you mean 'optimizer'?)"),
        ('dataset = "cifar10"', "needs --data-root DIR"),
        ('density = [0.5, 2]', "outside (0, 1]"),
        ('sparse_width = 4\ndensity = 0.05', "too small"),
    ],
)
def test_a_bad_study_stops_before_any_training(tmp_path: Path, grid: str, fragment: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"[[grid]]\n{grid}\n")
    code, output = run_cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert code == 2, output
    assert fragment in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_plan_json_contract_and_exact_equality() -> None:
    code, output = run_cli("plan", "--arch", "mlp", "--hidden-layers", "2", "--sparse-width", "512",
                           "--densities", "0.1,0.3,0.5,0.7,0.9", "--dataset", "mnist1d", "--format", "json")
    assert code == 0
    pairs = json.loads(output)["pairs"]
    assert [p["density"] for p in pairs] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert [p["dense_width"] for p in pairs] == [51, 154, 256, 358, 461]
    for pair in pairs:
        for layer in pair["layers"]:
            assert set(layer) >= {"name", "sparse_shape", "dense_shape", "sparse_active", "dense_active"}
            assert layer["sparse_active"] == layer["dense_active"] == int(np.prod(layer["dense_shape"]))


def test_plan_table_golden(monkeypatch: pytest.MonkeyPatch, golden: Golden) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("GFPROBE_WIDTH", "100")
    code, output = run_cli("plan", "--arch", "cnn", "--sparse-width", "32", "--densities", "0.1,0.5",
                           "--dataset", "cifar10")
    assert code == 0
    golden("scsdc-plan-cnn.txt", output)


def test_presets_list_their_sizes() -> None:
    code, output = run_cli("presets", "--format", "json")
    assert code == 0
    sizes = {p["name"]: p["runs"] for p in json.loads(output)["presets"]}
    assert sizes == {"quick": 72, "paper-mlp": 48600, "paper-cnn": 16200}


def test_a_finished_run_trained_with_other_settings_stops_the_study(tmp_path: Path) -> None:
    out, config = tmp_path / "out", write_config(tmp_path)
    assert run_cli("run", "--config", str(config), "--out", str(out), "--no-report")[0] == 0
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3"))
    stamps = {p: p.stat().st_mtime_ns for p in runs_in(out)}
    code, output = run_cli("run", "--config", str(config), "--out", str(out), "--no-report")
    assert code == 2
    assert "was trained with other settings (epochs = 2 -> 3); use another --out, or delete the file" in output
    assert {p: p.stat().st_mtime_ns for p in runs_in(out)} == stamps  # nothing trained, nothing deleted


def test_a_folder_in_a_run_files_place_is_one_line(tmp_path: Path) -> None:
    out, config = tmp_path / "out", write_config(tmp_path)
    blocker = out / "runs" / "mnist1d-mlp2-w32-d0.25-sparse-adam-lr0.001-NR-relu-s0.h5"
    (blocker / "inside").mkdir(parents=True)
    code, output = run_cli("run", "--config", str(config), "--out", str(out), "--no-report")
    assert code == 2 and output.count("\n") == 1, output
    assert f"cannot remove the unfinished run file {blocker}" in output and "remove it yourself" in output


def test_a_study_indexes_its_runs_as_they_finish_and_resumes_from_the_index(tmp_path: Path) -> None:
    from gfprobe.analysis.index import StudyIndex, file_key, options_key
    from gfprobe.study.work import finished_attrs

    out, config = tmp_path / "out", write_config(tmp_path, seed="[0, 1]")
    assert run_cli("run", "--config", str(config), "--out", str(out), "--no-report")[0] == 0
    index = StudyIndex.open(out / "runs")
    files = runs_in(out)
    assert len(index) == 4
    for path in files:  # every entry made in the worker is the file as it is now
        summary = index.get(path, options_key(), file_key(path))
        assert summary is not None and summary.status == "complete"
        assert finished_attrs(path, index) == finished_attrs(path) == summary.attrs
    report = CliRunner().invoke(main, ["report", str(out / "runs"), "--format", "json"])
    (out / "runs" / ".gfprobe-index.jsonl").unlink()
    unindexed = CliRunner().invoke(main, ["report", str(out / "runs"), "--format", "json"])
    assert report.exit_code == 0 and json.loads(report.output) == json.loads(unindexed.output)
