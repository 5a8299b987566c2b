"""``gfprobe record -- COMMAND`` end to end: real subprocesses, real training, real run files.

Every test runs gfprobe as a user would (``python -m gfprobe record ... -- python ...``) and
reads the HDF5 file back with the public reader. Scripts live in ``tests/scripts``; none of
them contains gfprobe code except ``train_log.py``, which calls ``gfprobe.log`` on purpose.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import SCRIPTS, THREE_STEPS, child_env, gloo_aborted, record

from gfprobe.adapters.torch_probe import FLUSH_SECONDS
from gfprobe.analysis.report import build_report
from gfprobe.errors import RunFileError
from gfprobe.store.reader import StreamData, open_run

PY = sys.executable
MLP = "train_mlp.py"
MLP_NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
MLP_KINDS = ["weight", "bias"] * 3


# -- helpers ---------------------------------------------------------------------------------
def read_run(path: Path) -> tuple[dict[str, Any], StreamData]:
    """The run's metadata and its first (only) optimizer stream."""
    with open_run(path) as run:
        assert run.n_streams == 1, f"expected one optimizer stream, found {run.n_streams}"
        return run.metadata, run.stream(0)


def h5_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.h5"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """gfprobe failed with ``code`` and said so in exactly one ``gfprobe:`` line, no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gfprobe: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def gfprobe_record(*args: str, cwd: Path | None = None, timeout: float = 120,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gfprobe record ARGS`` with full control over the arguments."""
    return subprocess.run([PY, "-m", "gfprobe", "record", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or child_env())


def plain_run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The same script without gfprobe, for comparisons."""
    result = subprocess.run([PY, str(SCRIPTS / script), *args], capture_output=True, text=True,
                            timeout=120, cwd=cwd, env=child_env())
    assert result.returncode == 0, result.stderr
    return result


def start_record(out: Path, *args: str, options: Sequence[str] = (),
                 stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """A long ``gfprobe record`` of train_mlp.py in its own session (stdin not a terminal by
    default), so that a test can signal gfprobe alone or its whole process group."""
    return subprocess.Popen(
        [PY, "-m", "gfprobe", "record", "--out", str(out), *options, "--", PY, str(SCRIPTS / MLP), *args],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(), start_new_session=True,
    )


def readable_steps(out: Path) -> int | None:
    """Steps of stream 0 that read back now; None while the file or its stream does not exist."""
    if not out.exists():
        return None
    try:
        with open_run(out) as run:
            return len(run.stream(0).steps) if run.n_streams else None
    except RunFileError:
        return None  # being created: SWMR starts once the layout exists


def wait_for_steps(out: Path, proc: subprocess.Popen[str], at_least: int, timeout: float = 90,
                   after_first_step: float | None = None) -> int:
    """Poll the run file while it is being written until ``at_least`` steps read back.

    The file appears at the first optimizer step; ``after_first_step`` limits the wait from then.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"gfprobe ended early with {proc.returncode}: {err}")
        n = readable_steps(out)
        if n is not None and n >= at_least:
            return n
        if n is not None and after_first_step is not None:
            deadline = min(deadline, time.monotonic() + after_first_step)
            after_first_step = None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    pytest.fail(f"fewer than {at_least} steps readable in {out} in time (training went on)")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (no psutil)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def saved(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path)
    return loaded


def assert_stats_match(stream: StreamData, row: int, grads: dict[str, torch.Tensor]) -> None:
    """Recorded raw statistics of one record equal those of the gradients the script saved."""
    assert sorted(stream.params.names) == sorted(grads)
    for col, name in enumerate(stream.params.names):
        g = grads[name].double()
        for field, expected in (("sumsq", (g * g).sum()), ("sum_abs", g.abs().sum()),
                                ("max_abs", g.abs().max())):
            np.testing.assert_allclose(stream.stats[field][row, col], expected.item(), rtol=1e-5,
                                       err_msg=f"{field} of {name}")
        assert stream.stats["nonfinite"][row, col] == 0
        assert stream.stats["has_grad"][row, col] == 1


# -- 1. plain script ---------------------------------------------------------------------------
def test_plain_script_records_every_optimizer_step(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "6", options=["--attr", "density=0.3", "--attr", "note=plain"],
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done steps=6" in result.stdout

    meta, stream = read_run(out)
    assert stream.steps.tolist() == list(range(6))
    assert not stream.skipped.any()
    assert stream.optimizer == "SGD"
    assert stream.params.names == MLP_NAMES
    assert stream.params.kinds == MLP_KINDS
    assert stream.params.shapes == [(32, 16), (32,), (32, 32), (32,), (4, 32), (4,)]
    assert (stream.stats["has_grad"] == 1).all()
    assert (stream.stats["sumsq"] > 0).all()
    assert np.isfinite(stream.stats["sumsq"]).all()
    assert (np.diff(stream.times) >= 0).all()
    assert meta["status"] == "complete"
    assert meta["command"] == [PY, str(SCRIPTS / MLP), "--steps", "6"]
    assert meta["cwd"] == str(tmp_path)
    assert meta["every"] == 1
    assert meta["masks"] == "auto"
    assert meta["pid"] != os.getpid()
    with open_run(out) as run:
        assert run.attrs == {"density": 0.3, "note": "plain"}

    lines = [line for line in result.stderr.splitlines() if line.startswith("gfprobe:")]
    (line,) = lines
    assert re.fullmatch(rf"gfprobe: recorded 6 steps of 3 weight layers to {re.escape(str(out))} \(complete\); "
                        r"gfprobe's own time \d+\.\d% of the step time", line), line
    assert h5_files(tmp_path) == [out]


# -- 2. python -m package.module -----------------------------------------------------------
def test_python_dash_m_module_with_default_out(tmp_path: Path) -> None:
    shutil.copytree(SCRIPTS / "e2e_pkg", tmp_path / "e2e_pkg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = gfprobe_record("--", PY, "-m", "e2e_pkg.train", "--steps", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "e2e_pkg: done steps=5" in result.stdout

    (out,) = h5_files(tmp_path)  # no --out: gfprobe-runs/<date>-<time>-<module>.h5 under the cwd
    assert out.parent == tmp_path / "gfprobe-runs"
    assert re.fullmatch(r"\d{8}-\d{6}-e2e_pkg\.train\.h5", out.name), out.name
    assert str(out.relative_to(tmp_path)) in result.stderr
    meta, stream = read_run(out)
    assert meta["status"] == "complete"
    assert meta["command"] == [PY, "-m", "e2e_pkg.train", "--steps", "5"]
    assert stream.optimizer == "Adam"
    assert stream.steps.tolist() == list(range(5))
    assert stream.params.names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert stream.params.kinds == ["weight", "bias", "weight", "bias"]
    assert stream.params.module_types == ["Conv2d", "Conv2d", "Linear", "Linear"]


# -- 3. gradient accumulation ------------------------------------------------------------------
def test_gradient_accumulation_records_the_accumulated_gradient(tmp_path: Path) -> None:
    out, grads, weights = tmp_path / "run.h5", tmp_path / "grads.pt", tmp_path / "weights.pt"
    result = record(out, "train_grads.py", "--steps", "3", "--accumulate", "4",
                    "--save-grads", str(grads), "--save-weights", str(weights))
    assert result.returncode == 0, result.stderr
    assert "micro_batches=12" in result.stdout

    meta, stream = read_run(out)
    assert meta["status"] == "complete"
    assert stream.steps.tolist() == [0, 1, 2]  # once per optimizer step, not per micro-batch
    assert_stats_match(stream, -1, saved(grads))

    # Recording changes nothing: the same script without gfprobe ends with identical weights.
    reference = tmp_path / "reference.pt"
    plain_run("train_grads.py", "--steps", "3", "--accumulate", "4", "--save-weights", str(reference))
    recorded, expected = saved(weights), saved(reference)
    for name, tensor in expected.items():
        assert torch.equal(recorded[name], tensor), name


# -- 4. AMP GradScaler -------------------------------------------------------------------------
def test_amp_skipped_step_is_marked_and_excluded(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "10", "--amp", "--nonfinite-at", "5")
    assert result.returncode == 0, result.stderr

    meta, stream = read_run(out)
    assert meta["status"] == "complete"
    assert stream.steps.tolist() == list(range(10))  # every attempt, the skipped one included
    assert stream.skipped.tolist() == [i == 5 for i in range(10)]
    nonfinite = stream.stats["nonfinite"].sum(axis=1)
    assert nonfinite[5] > 0
    assert (np.delete(nonfinite, 5) == 0).all()
    finite = np.delete(stream.stats["sumsq"], 5, axis=0)
    assert np.isfinite(finite).all() and (finite > 0).all()

    (summary,) = build_report([out])
    assert (summary.steps, summary.skipped) == (9, 1)
    assert f"recorded 9 steps of 3 weight layers to {out} (complete)" in result.stderr


# -- 5. DataLoader workers -------------------------------------------------------------------
def test_dataloader_workers_leave_one_run_file(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "6", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    assert h5_files(tmp_path) == [out]
    assert not (tmp_path / "gfprobe-runs").exists()
    meta, stream = read_run(out)
    assert meta["status"] == "complete"
    assert stream.steps.tolist() == list(range(6))
    assert stream.params.names == MLP_NAMES
    assert (stream.stats["has_grad"] == 1).all()
    assert result.stderr.count("gfprobe:") == 1, result.stderr


# -- 6. torch.compile ------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_compile_names_have_no_wrapper_prefix(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "6", "--compile")
    assert result.returncode == 0, result.stderr

    meta, stream = read_run(out)
    assert meta["status"] == "complete"
    assert stream.steps.tolist() == list(range(6))
    assert stream.params.names == MLP_NAMES
    assert not any("_orig_mod" in name for name in stream.params.names)
    assert (stream.stats["sumsq"] > 0).all()


# -- 7. SIGKILL ------------------------------------------------------------------------------
def test_sigkill_keeps_every_flushed_step(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    proc = start_record(out, "--steps", "100000", "--sleep", "0.05")
    try:
        seen = wait_for_steps(out, proc, at_least=3)
        (child,) = child_pids(proc.pid)
        os.kill(child, signal.SIGKILL)  # the training process, not gfprobe
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 128 + signal.SIGKILL, err
    assert f"to {out} (running)" in err
    meta, stream = read_run(out)
    assert meta["status"] == "running"
    assert "end_time" not in meta
    assert len(stream.steps) >= seen
    assert stream.steps.tolist() == list(range(len(stream.steps)))
    assert np.isfinite(stream.stats["sumsq"]).all() and (stream.stats["has_grad"] == 1).all()


def test_sigkill_of_the_whole_process_group(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    proc = start_record(out, "--steps", "100000", "--sleep", "0.05")
    try:
        seen = wait_for_steps(out, proc, at_least=3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)

    assert proc.returncode == -signal.SIGKILL
    meta, stream = read_run(out)
    assert meta["status"] == "running"
    assert len(stream.steps) >= seen
    assert stream.steps.tolist() == list(range(len(stream.steps)))


def test_bug_every_n_flushes_a_recorded_step_while_unrecorded_steps_go_on(tmp_path: Path) -> None:
    """Regression: with --every N a recorded row waited for the next recorded step to flush."""
    # Only step 0 is on the schedule. Steps go on every 0.05 s, so the recorder must flush it
    # within FLUSH_SECONDS (2 s); 8 s after the file appeared it must read back, and survive.
    out = tmp_path / "run.h5"
    proc = start_record(out, "--steps", "100000", "--sleep", "0.05", options=["--every", "100000"])
    try:
        wait_for_steps(out, proc, at_least=1, after_first_step=FLUSH_SECONDS + 6)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
    _, stream = read_run(out)
    assert stream.steps.tolist() == [0]


# -- 8. SIGTERM / SIGINT to gfprobe ----------------------------------------------------------
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 128 + 15), (signal.SIGINT, 128 + 2)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_to_gfprobe_is_relayed_and_finalises_the_file(
        tmp_path: Path, signum: signal.Signals, exit_code: int) -> None:
    out = tmp_path / "run.h5"
    proc = start_record(out, "--steps", "100000", "--sleep", "0.05")
    try:
        seen = wait_for_steps(out, proc, at_least=3)
        (child,) = child_pids(proc.pid)
        os.kill(proc.pid, signum)  # gfprobe only; it must pass the signal on
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    # A child that dies of signal N gives 128+N, like a shell. Python dies of SIGINT after an
    # uncaught KeyboardInterrupt (after printing its traceback), so SIGINT gives 130 as well.
    assert proc.returncode == exit_code, err
    assert not Path(f"/proc/{child}").exists()
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    assert f"to {out} (interrupted)" in err
    meta, stream = read_run(out)
    assert meta["status"] == "interrupted"
    assert "end_time" in meta
    assert len(stream.steps) >= seen
    assert stream.steps.tolist() == list(range(len(stream.steps)))
    with open_run(out) as run:  # finalised: a plain (non-SWMR) open works
        assert run.metadata["status"] == "interrupted"
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "interrupted"


def test_sigint_at_a_terminal_is_not_relayed_twice(tmp_path: Path) -> None:
    # With stdin a terminal, Ctrl-C reaches the whole foreground process group: gfprobe must
    # ignore it and let the child handle its own, single KeyboardInterrupt.
    out = tmp_path / "run.h5"
    controller, terminal = os.openpty()
    try:
        proc = start_record(out, "--steps", "100000", "--sleep", "0.05", stdin=terminal)
        try:
            seen = wait_for_steps(out, proc, at_least=3)
            (child,) = child_pids(proc.pid)
            os.kill(proc.pid, signal.SIGINT)  # to gfprobe alone: ignored, not relayed
            time.sleep(1.0)
            assert proc.poll() is None
            assert Path(f"/proc/{child}").exists()
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        os.close(terminal)
        os.close(controller)

    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.count("KeyboardInterrupt") == 1, err
    meta, stream = read_run(out)
    assert meta["status"] == "interrupted"
    assert len(stream.steps) >= seen


# -- 9. torchrun DDP -------------------------------------------------------------------------
def test_torchrun_ddp_rank0_records_the_averaged_gradient(tmp_path: Path) -> None:
    out, grads = tmp_path / "run.h5", tmp_path / "grads.pt"
    command = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(SCRIPTS / "train_ddp.py")]
    for _ in range(2):  # once more after torch's own gloo abort at a rank's exit (see gloo_aborted)
        for stale in (*h5_files(tmp_path), grads):
            stale.unlink(missing_ok=True)
        result = record(out, command, "--steps", "4", "--save", str(grads), cwd=tmp_path)
        if not gloo_aborted(result):
            break
    assert result.returncode == 0, result.stderr
    assert "rank 0 done" in result.stdout and "rank 1 done" in result.stdout

    assert h5_files(tmp_path) == [out]
    meta, stream = read_run(out)
    data = saved(grads)
    assert data["world"] == 2
    assert meta["status"] == "complete"
    assert meta["pid"] == data["pid"]  # written by rank 0's worker, not by the launcher
    assert stream.steps.tolist() == [0, 1, 2, 3]
    assert stream.params.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, g in data["ddp"].items():  # DDP really averaged: equals the mean of local grads
        torch.testing.assert_close(g, data["manual"][name], rtol=1e-5, atol=1e-7)
    assert_stats_match(stream, -1, data["ddp"])


# -- 10. bad input ---------------------------------------------------------------------------
def test_command_not_found_exits_127(tmp_path: Path) -> None:
    result = gfprobe_record("--out", str(tmp_path / "run.h5"), "--", "no-such-command-gfprobe", "x")
    assert_one_line_error(result, 127, "command not found", "no-such-command-gfprobe")
    result = gfprobe_record("--out", str(tmp_path / "run.h5"), "--", str(tmp_path / "missing.sh"))
    assert_one_line_error(result, 127, "missing.sh")
    assert h5_files(tmp_path) == []


def test_script_without_optimizer_records_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--no-optimizer")
    assert result.returncode != 0
    assert_one_line_error(result, result.returncode, "nothing was recorded", "never stepped")
    assert result.stdout.strip()  # the script itself ran and printed its output
    assert h5_files(tmp_path) == []
    with pytest.raises(RunFileError, match="no such file"), open_run(out):
        pass


def test_bug_a_command_that_never_trained_left_an_empty_runs_folder(tmp_path: Path) -> None:
    result = gfprobe_record("--", PY, "-c", "print('no training')", cwd=tmp_path)
    assert_one_line_error(result, 3, "nothing was recorded", "never stepped")
    assert list(tmp_path.iterdir()) == [], "gfprobe-runs/ was created for nothing"


def test_crashing_script_keeps_its_steps_and_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "20", "--crash-at", "7")
    assert result.returncode == 1
    assert "RuntimeError: crash requested by --crash-at" in result.stderr
    assert f"recorded 7 steps of 3 weight layers to {out} (failed)" in result.stderr
    meta, stream = read_run(out)
    assert meta["status"] == "failed"
    assert stream.steps.tolist() == list(range(7))


def test_existing_out_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    out.write_bytes(b"keep me")
    result = gfprobe_record("--out", str(out), "--", PY, "-c", "pass")
    assert_one_line_error(result, 2, "--force", str(out))
    assert out.read_bytes() == b"keep me"

    result = record(out, MLP, "--steps", "2", options=["--force"])
    assert result.returncode == 0, result.stderr
    assert read_run(out)[1].steps.tolist() == [0, 1]


@pytest.mark.parametrize(("spec", "fragment"), [
    ("loss=loss=[0-9.]+", "capture group"),
    ("loss=(", "invalid regular expression"),
    ("no-equals-sign", "NAME=REGEX"),
])
def test_bad_metric_option_exits_2_before_running(tmp_path: Path, spec: str, fragment: str) -> None:
    marker = tmp_path / "ran"
    result = gfprobe_record("--out", str(tmp_path / "run.h5"), "--metric", spec, "--",
                            PY, "-c", f"open({str(marker)!r}, 'w')")
    assert_one_line_error(result, 2, "--metric", fragment)
    assert not marker.exists()
    assert h5_files(tmp_path) == []


# -- 11. --metric from the script's output ---------------------------------------------------
def test_metric_regex_records_printed_values_and_keeps_output(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    args = ("--steps", "8", "--print-metric")
    result = record(out, MLP, *args, options=["--metric", r"train_loss=train_loss=([0-9.]+)"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_run(MLP, *args).stdout  # the child's output, byte for byte

    printed = re.findall(r"^step (\d+) train_loss=([0-9.]+)$", result.stdout, flags=re.M)
    assert len(printed) == 8
    with open_run(out) as run:
        metrics = run.metrics()
    assert list(metrics) == ["train_loss"]
    loss = metrics["train_loss"]
    assert loss.values.tolist() == [float(v) for _, v in printed]
    assert loss.steps.tolist() == [int(s) for s, _ in printed]  # optimizer steps taken so far


def test_bug_metric_on_a_last_line_without_newline(tmp_path: Path) -> None:
    """Regression: a final output line without a newline was never scanned for --metric."""
    out = tmp_path / "run.h5"
    code = ("import torch\n"
            "m = torch.nn.Linear(2, 1)\n"
            "opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
            "m(torch.ones(1, 2)).sum().backward()\n"
            "opt.step()\n"
            "print('acc=0.5')\n"
            "print('acc=0.75', end='')\n")
    result = record(out, [PY, "-c", code], options=["--metric", "acc=acc=([0-9.]+)"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "acc=0.5\nacc=0.75"
    with open_run(out) as run:
        assert run.metrics()["acc"].values.tolist() == [0.5, 0.75]


# -- 12. --every -----------------------------------------------------------------------------
def test_every_records_every_nth_step(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "20", options=["--every", "5"])
    assert result.returncode == 0, result.stderr
    meta, stream = read_run(out)
    assert stream.steps.tolist() == [0, 5, 10, 15]
    assert meta["every"] == 5
    assert meta["status"] == "complete"
    assert f"recorded 4 steps of 3 weight layers to {out}" in result.stderr


# -- 13. pruning masks -----------------------------------------------------------------------
def test_prune_mask_is_found_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, MLP, "--steps", "4", "--prune", "0.5")
    assert result.returncode == 0, result.stderr
    _, stream = read_run(out)
    params = stream.params
    assert sorted(params.names) == sorted(MLP_NAMES)  # "2.weight", not "2.weight_orig"
    col = params.names.index("2.weight")
    assert params.mask_sources[col] == "prune"
    assert params.kinds[col] == "weight"
    assert all(src == "none" for i, src in enumerate(params.mask_sources) if i != col)
    assert (stream.stats["active"][:, col] == 32 * 32 // 2).all()
    others = [i for i in range(len(params.names)) if i != col]
    assert (stream.stats["active"][:, others] == params.numel[others]).all()
    for field in ("sumsq", "sum_abs", "max_abs", "nonfinite"):
        np.testing.assert_array_equal(stream.stats[f"masked_{field}"][:, col], stream.stats[field][:, col])
    assert (stream.stats["sumsq"][:, col] > 0).all()


# -- 14. gfprobe.log from inside the script --------------------------------------------------
def test_gfprobe_log_inside_a_recorded_script(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = record(out, "train_log.py", "--steps", "4")
    assert result.returncode == 0, result.stderr
    acc = float(re.search(r"test_acc=([0-9.]+)", result.stdout).group(1))  # type: ignore[union-attr]

    with open_run(out) as run:
        metrics = run.metrics()
        assert run.stream(0).steps.tolist() == [0, 1, 2, 3]
    assert sorted(metrics) == ["probe_value", "test_acc"]
    np.testing.assert_allclose(metrics["test_acc"].values, [acc, 0.5], rtol=1e-6)
    assert metrics["test_acc"].steps.tolist() == [4, 4]  # default step: optimizer steps so far
    assert metrics["probe_value"].values.tolist() == [0.25]
    assert metrics["probe_value"].steps.tolist() == [1]


LOOKS_FOR_TORCH_FIRST = """
import importlib.util
assert importlib.util.find_spec("torch") is not None  # as transformers' is_torch_available() does
""" + THREE_STEPS


def test_a_script_that_looks_for_torch_before_importing_it_is_recorded(tmp_path: Path) -> None:
    """Libraries check whether torch is installed (``find_spec``) before importing it; that look-up
    used to use up gfprobe's wait for ``import torch``, and such a script recorded nothing."""
    script = tmp_path / "train.py"
    script.write_text(LOOKS_FOR_TORCH_FIRST)
    out = tmp_path / "run.h5"
    result = record(out, [sys.executable, str(script)])
    assert result.returncode == 0, result.stderr
    with open_run(out) as run:
        assert run.stream(0).steps.tolist() == [0, 1, 2]
