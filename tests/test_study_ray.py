"""Studies on Ray (``gfprobe scsdc run --executor ray``) against a real local Ray cluster of 2
CPUs, and the local executor's worker pool: the same runs and files, a killed worker's run redone
on resume, a failing run reported while the others finish, devices assigned one run per slot."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env

from gfprobe.analysis.index import INDEX_NAME, StudyIndex
from gfprobe.errors import ConfigError
from gfprobe.store.reader import open_run
from gfprobe.study import devices, runner
from gfprobe.study.config import Study, parse_study
from gfprobe.study.executors.local import LocalExecutor
from gfprobe.study.work import Job

ray = pytest.importorskip("ray")

SCRIPTS = Path(__file__).parent / "scripts"
STUDY = """
[study]
name = "ray"
epochs = {epochs}
eval_every = 1

[[grid]]
dataset = "mnist1d"
sparse_width = 32
density = 0.25
optimizer = "adam"
seed = {seeds}
"""


def study_file(tmp_path: Path, epochs: int = 2, seeds: str = "[0, 1]") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(epochs=epochs, seeds=seeds))
    return path


def scsdc_run(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfprobe", "scsdc", "run", "--config", str(config), "--out", str(out),
                           "--no-report", *args], capture_output=True, text=True, timeout=300, env=child_env(),
                          stdin=subprocess.DEVNULL)


def recorded(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray], np.ndarray]:
    with open_run(path) as run:
        stream = run.stream(0)
        return run.attrs, dict(stream.stats), run.metrics()["test_acc"].values


@pytest.fixture
def head_node(tmp_path: Path) -> Iterator[str]:
    """A Ray cluster started as on a real head node (``ray start --head``); its address."""
    port = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120, env=child_env())
    assert started.returncode == 0, started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=child_env())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_ray_trains_the_same_runs_into_the_same_files_as_the_local_executor(tmp_path: Path, head_node: str) -> None:
    """On a cluster started with ``ray start`` into a folder the workers share, and on a local Ray
    instance with the workers sending their files back (--collect)."""
    config = study_file(tmp_path)
    local = scsdc_run(config, tmp_path / "local", "--jobs", "2", "--cpus-per-run", "1")
    assert local.returncode == 0, local.stderr
    local_files = sorted(p.name for p in (tmp_path / "local" / "runs").glob("*.h5"))
    for folder, extra in (("ray", ["--address", head_node]), ("collected", ["--collect"])):
        on_ray = scsdc_run(config, tmp_path / folder, "--executor", "ray", "--cpus-per-run", "1", *extra)
        assert on_ray.returncode == 0, on_ray.stderr
        assert "4 of 4 runs done (4 trained now)" in on_ray.stderr and "Traceback" not in on_ray.stderr
        left = sorted(p.name for p in (tmp_path / folder / "runs").iterdir() if p.name != INDEX_NAME)
        assert left == local_files  # nothing else left: no temporary or collected file
        assert len(StudyIndex.open(tmp_path / folder / "runs")) == (0 if extra == ["--collect"] else 4)
        for name in local_files:
            assert runner.is_done(tmp_path / folder / "runs" / name)
            attrs, stats, acc = recorded(tmp_path / folder / "runs" / name)
            local_attrs, local_stats, local_acc = recorded(tmp_path / "local" / "runs" / name)
            assert attrs == local_attrs and np.array_equal(acc, local_acc)
            assert stats.keys() == local_stats.keys()
            assert all(np.array_equal(stats[k], local_stats[k]) for k in stats)  # one thread each: bit-identical
    again = scsdc_run(config, tmp_path / "ray", "--executor", "ray", "--address", head_node)
    assert again.returncode == 0 and "4 of 4 runs done (0 trained now)" in again.stderr


def holder_of(path: Path) -> int | None:
    """The process with ``path`` open (its run file's writer), found by inode: the writer opened
    the file under a temporary name before giving it its own."""
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.stat().st_ino == inode:
                    return int(proc.name)
        except OSError:  # gone, or not ours
            continue
    return None


def test_a_ray_worker_killed_mid_run_is_reported_and_its_run_redone_on_resume(tmp_path: Path) -> None:
    config, out = study_file(tmp_path, epochs=80, seeds="0"), tmp_path / "out"
    command = [sys.executable, "-m", "gfprobe", "scsdc", "run", "--config", str(config), "--out", str(out),
               "--no-report", "--executor", "ray"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            stdin=subprocess.DEVNULL)
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            for path in (out / "runs").glob("*.h5") if (out / "runs").exists() else []:
                if (pid := holder_of(path)) is not None:
                    victim = path
                    os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert victim is not None, "no run file was seen being written"
    assert proc.returncode == 1, err
    assert f"run {victim.stem} failed: Ray lost the run" in err and "rerun the same command" in err
    assert "1 of 2 runs done (1 trained now)" in err and "Traceback" not in err
    assert not runner.is_done(victim)
    resumed = scsdc_run(config, out, "--executor", "ray")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 2 runs done (1 trained now)" in resumed.stderr
    assert runner.is_done(victim)


def ray_processes() -> set[int]:
    """Ray's own daemons and workers now running (of any Ray instance)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            name = (proc / "comm").read_text().strip() if proc.name.isdigit() else ""
        except OSError:
            continue
        if name in ("raylet", "gcs_server") or name.startswith("ray::"):
            found.add(int(proc.name))
    return found


def test_ctrl_c_stops_a_ray_study_and_the_same_command_finishes_it(tmp_path: Path) -> None:
    before = ray_processes()
    config, out = study_file(tmp_path, epochs=30, seeds="[0, 1]"), tmp_path / "out"
    command = [sys.executable, "-m", "gfprobe", "scsdc", "run", "--config", str(config), "--out", str(out),
               "--no-report", "--executor", "ray"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(runner.is_done(p) for p in (out / "runs").glob("*.h5")) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command" in err and "Traceback" not in err
    deadline = time.monotonic() + 60
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes() - before  # the Ray instance the command started is gone, workers and all
    finished = [p for p in (out / "runs").glob("*.h5") if runner.is_done(p)]
    assert 0 < len(finished) < 4
    resumed = scsdc_run(config, out, "--executor", "ray")
    assert resumed.returncode == 0, resumed.stderr
    assert f"4 of 4 runs done ({4 - len(finished)} trained now)" in resumed.stderr


@pytest.fixture
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs started by the test; its workers can import tests/scripts."""
    path = os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        yield
    finally:
        ray.shutdown()


def tiny_study(seeds: tuple[int, ...] = (0, 1)) -> Study:
    """Two seeds of a sparse/dense pair, one epoch each."""
    return parse_study({"study": {"name": "t", "epochs": 1, "eval_every": 1},
                        "grid": [{"sparse_width": 32, "density": 0.25, "seed": list(seeds)}]})


@pytest.mark.parametrize("work", ["raise_for_seed_1", "kill_worker_for_seed_1"])
def test_a_failing_ray_run_is_reported_and_the_others_finish(tmp_path: Path, ray_cluster: None,
                                                             monkeypatch: pytest.MonkeyPatch, work: str) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import study_work

    monkeypatch.setattr(runner, "train_one", getattr(study_work, work))
    finished: list[tuple[str, str | None]] = []
    outcome = runner.run_study(tiny_study(), tmp_path, runner.RunOptions(executor="ray"),
                               on_run=lambda spec, error: finished.append((spec.run_id, error)))
    failed, = (run_id for run_id, error in finished if error is not None)
    assert "-sparse-" in failed and failed.endswith("-s1")
    reason = outcome.failed[failed]
    if work == "raise_for_seed_1":
        assert reason == "the Ray task failed: RuntimeError: injected failure"
    else:
        assert reason.startswith("Ray lost the run") and "rerun the same command" in reason
    assert len(outcome.trained) == 3 and all(runner.is_done(p) for p in outcome.trained)
    assert ray.is_initialized()  # a cluster the caller started is left running


def test_runs_needing_more_than_any_node_has_are_refused_before_training(tmp_path: Path, ray_cluster: None) -> None:
    options = runner.RunOptions(executor="ray", cpus_per_run=3)
    with pytest.raises(ConfigError, match="no node of the Ray cluster has 3 CPU"):
        runner.run_study(tiny_study(), tmp_path, options)
    assert not list((tmp_path / "runs").glob("*.h5"))


def test_local_workers_are_pinned_one_per_gpu_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each spawned worker sees only its own GPU before torch starts: its CUDA_VISIBLE_DEVICES
    is one entry of the plan, and its device is plain cuda (no GPU is needed to see this)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import study_work

    slots = devices.plan_gpu_slots("cuda", 2, 1.0, ["3", "5"])
    job = Job(tmp_path, device="cuda")
    seen = {outcome.error for _, outcome in LocalExecutor(2, slots.gpus).run(
        functools.partial(study_work.visible_gpus, job), tiny_study((0, 1, 2, 3)).runs)}
    assert seen <= {"3 cuda", "5 cuda"} and seen  # never unpinned, never both GPUs


def test_a_local_worker_that_dies_costs_only_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import study_work

    monkeypatch.setattr(runner, "train_one", study_work.kill_worker_for_seed_1)
    outcome = runner.run_study(tiny_study(), tmp_path, runner.RunOptions(jobs=2))
    failed, = outcome.failed
    assert failed.endswith("-s1") and "-sparse-" in failed and "worker process died" in outcome.failed[failed]
    assert len(outcome.trained) == 3 and all(runner.is_done(p) for p in outcome.trained)


@pytest.mark.parametrize(
    ("device", "jobs", "share", "gpus", "expected"),
    [
        ("cuda", 2, 1.0, ["0", "1"], ("0", "1")),
        ("cuda", 4, 0.5, ["0", "1"], ("0", "1", "0", "1")),
        ("cuda", 3, 0.3, ["GPU-a"], ("GPU-a",) * 3),  # ⌊1/0.3⌋ = 3 runs share it
        ("cuda:1", 2, 0.5, ["4", "6"], ("6", "6")),  # cuda:1 of what the user made visible
        ("cuda", 5, 0.2, ["0"], ("0",) * 5),  # 1/0.2 is 4.999... in floating point: still 5
    ],
)
def test_gpu_slots(device: str, jobs: int, share: float, gpus: list[str], expected: tuple[str, ...]) -> None:
    assert devices.plan_gpu_slots(device, jobs, share, gpus).gpus == expected


@pytest.mark.parametrize(
    ("device", "jobs", "share", "gpus", "fragment"),
    [
        ("cuda", 3, 1.0, ["0", "1"], "--jobs 3 with --device cuda: 2 GPU(s) at --gpus-per-run 1 take 2 run(s)"),
        ("cuda", 4, 0.5, ["0"], "use --jobs 2, or a smaller --gpus-per-run (e.g. 0.25)"),
        ("cuda:2", 1, 1.0, ["0", "1"], "shows 2 GPUs (cuda:0 to cuda:1)"),
        ("cuda", 2, 1.0, [], "no GPU is visible"),
    ],
)
def test_gpu_slots_refused(device: str, jobs: int, share: float, gpus: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        devices.plan_gpu_slots(device, jobs, share, gpus)


def test_a_gpu_share_is_refused_outside_0_1_and_on_the_cpu() -> None:
    assert devices.check_gpus_per_run(None, "cuda") == 1.0 and devices.check_gpus_per_run(None, "cpu") == 0.0
    for value in (0.0, 1.5, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="must be in"):
            devices.check_gpus_per_run(value, "cuda")
    with pytest.raises(ConfigError, match="needs --device cuda"):
        devices.check_gpus_per_run(0.5, "cpu")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--executor", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers there"),
        (["--executor", "ray", "--address", "localhost:x"], "--address 'localhost:x': the port must be a number"),
        (["--executor", "ray", "--device", "cuda:0"], "Ray assigns each run its GPU; use --device cuda"),
        (["--executor", "ray", "--device", "cuda"], "the Ray cluster has no GPU; use --device cpu"),
        (["--address", "auto"], "--address names a Ray cluster; add --executor ray"),
    ],
)
def test_bad_executor_options_get_one_line_and_train_nothing(tmp_path: Path, args: list[str], line: str) -> None:
    done = scsdc_run(study_file(tmp_path), tmp_path / "out", *args)
    assert done.returncode == 2, done.stderr
    assert line in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list((tmp_path / "out" / "runs").glob("*.h5"))


def test_without_ray_the_executor_says_how_to_install_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    done = subprocess.run([sys.executable, "-m", "gfprobe", "scsdc", "run", "--config", str(study_file(tmp_path)),
                           "--out", str(tmp_path / "out"), "--executor", "ray"], capture_output=True, text=True,
                          timeout=120, env=child_env(PYTHONPATH=str(blocker.parent)))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gfprobe: --executor ray needs Ray, which is not installed here; install it with: pip install 'gfprobe[ray]'"]
