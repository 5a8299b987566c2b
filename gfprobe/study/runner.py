"""Running a study: which runs are done, which to (re)do, where they train (an executor), progress.

A run is done when its file reads back with status ``complete`` and a ``test_acc`` metric. Any
other file of the study (interrupted, failed, killed mid-write) is deleted and its run trained
again, so rerunning the same command after a crash or Ctrl-C picks up where the study stopped.
Runs are independent: one failing is reported at the end and never stops the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gfprobe.analysis.index import StudyIndex
from gfprobe.errors import ConfigError
from gfprobe.study import capacity, devices, names
from gfprobe.study.config import RunSpec, Study
from gfprobe.study.devices import check_device
from gfprobe.study.executors import EXECUTORS, Executor
from gfprobe.study.executors.local import LocalExecutor
from gfprobe.study.executors.ray import import_ray
from gfprobe.study.runattrs import changed_settings
from gfprobe.study.work import RUNS_DIR, Job, RunOutcome, finished_attrs, is_done, run_path, train_one

__all__ = ["RUNS_DIR", "RunOptions", "StudyOutcome", "check_study", "is_done", "run_path", "run_study"]


@dataclass
class StudyOutcome:
    """What a run of the study command did."""

    done_before: list[Path] = field(default_factory=list)  # finished by an earlier invocation
    trained: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> one-line reason

    @property
    def files(self) -> list[Path]:
        return sorted([*self.done_before, *self.trained])


@dataclass(frozen=True)
class RunOptions:
    data_root: Path | None = None
    download: bool = False
    jobs: int | None = None  # local: runs at once (default 1); ray: runs in flight (default: what fits)
    device: str = "cpu"
    executor: str = "local"
    address: str | None = None  # ray: the cluster to connect to
    cpus_per_run: int | None = None  # torch threads per run; ray: the CPUs each task asks for
    gpus_per_run: float | None = None  # share of a GPU per run (default 1 on CUDA)
    collect: bool = False  # workers write to their own disk and send each run file back


def check_study(study: Study, options: RunOptions) -> None:
    """Everything that can be checked before training: the executor and devices, every pair's
    capacity plan, and every data set's files (loaded once here, so a missing file stops the
    study before it starts)."""
    require_torch()
    from gfprobe.study import data  # imports torch: only a study that trains gets here

    if not study.runs:
        raise ConfigError("the study has no runs")
    check_options(options)
    if options.executor == "local":  # a Ray cluster's devices are its nodes', checked when connected
        check_device(options.device)
    pairs = {(s.arch, s.dataset, s.sparse_width, s.density, s.hidden_layers) for s in study.runs}
    for arch, dataset, width, density, hidden in sorted(pairs):
        capacity.plan_pair(arch, names.DATASETS[dataset], width, density, hidden)
    # Each data setting once: a probe batch too large for its training split stops the study here.
    settings = {(s.dataset, s.samples, s.test_fraction, s.probe_batch) for s in study.runs}
    for dataset, samples, fraction, probe in sorted(settings, key=str):
        data.hold_out(data.load(dataset, options.data_root, options.download, samples, fraction), probe)


def check_options(options: RunOptions) -> None:
    """Options that contradict each other, or an executor that cannot run here."""
    if options.executor not in EXECUTORS:
        raise ConfigError(f"--executor {options.executor!r} is not known; use one of {', '.join(EXECUTORS)}")
    if options.jobs is not None and options.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {options.jobs}")
    if options.cpus_per_run is not None and options.cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run must be at least 1, got {options.cpus_per_run}")
    devices.check_gpus_per_run(options.gpus_per_run, options.device)
    if options.executor == "local" and options.address is not None:
        raise ConfigError("--address names a Ray cluster; add --executor ray")
    if options.executor == "ray":
        if options.device.startswith("cuda:"):
            raise ConfigError(f"--device {options.device}: Ray assigns each run its GPU; use --device cuda")
        import_ray(options.address)


def require_torch() -> None:
    """Training needs torch, which ``pip install gfprobe`` (the analysis side) does not install."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise ConfigError(f"training needs torch, which cannot be imported here ({exc})") from None
        raise ConfigError("training needs torch, which is not installed here; "
                          "install it with: pip install 'gfprobe[torch]'") from None
    except ImportError as exc:  # a broken or half-installed torch
        raise ConfigError(f"training needs torch, which cannot be imported here ({exc})") from None


def plan_work(study: Study, out_dir: Path, index: StudyIndex | None = None) -> tuple[list[RunSpec], list[Path]]:
    """(runs to train, files already done); unfinished files are removed so their runs restart.
    A finished file trained with other settings (say, more epochs) stops the study: it is neither
    this study's run nor anything to delete."""
    todo, done = [], []
    for spec in study.runs:
        path = run_path(out_dir, spec)
        attrs = finished_attrs(path, index)
        if attrs is not None:
            if changed := changed_settings(attrs, spec):
                raise ConfigError(f"{path} was trained with other settings ({'; '.join(changed)}); "
                                  "use another --out, or delete the file to train it again")
            done.append(path)
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # a folder in the file's place, or no right to delete it
            raise ConfigError(f"cannot remove the unfinished run file {path} to redo it ({exc.strerror or exc}); "
                              "remove it yourself, then rerun") from None
        todo.append(spec)
    return todo, done


# The study index (gfprobe.analysis.index) is written this often while runs finish, and at the end:
# a whole rewrite (about 1 KB a run), so not after every run of a 50,000-run study.
INDEX_SAVE_SECONDS = 30.0


def threads_per_job(jobs: int) -> int:
    """Split the machine's cores between the jobs, so parallel runs do not oversubscribe it."""
    return max(1, (os.cpu_count() or 1) // jobs)


OnStart = Callable[[int, int], None]  # (runs already done, runs to train), once planned
OnRun = Callable[[RunSpec, str | None], None]  # (run, error or None), after each run


def run_study(study: Study, out_dir: Path, options: RunOptions, on_start: OnStart | None = None,
              on_run: OnRun | None = None) -> StudyOutcome:
    """Train every run of ``study`` not yet done under ``out_dir``."""
    check_options(options)
    out_dir = out_dir.absolute()  # workers elsewhere (Ray) do not share this process's folder
    try:
        (out_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # checked before by the CLI; this covers the library and a race
        raise ConfigError(f"cannot create {out_dir / RUNS_DIR} ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
    index = StudyIndex.open(out_dir / RUNS_DIR)
    todo, done = plan_work(study, out_dir, index)
    executor, job = _executor(options, out_dir)
    outcome = StudyOutcome(done_before=done)
    if not todo:  # nothing to train: no pool to start, no cluster to reach
        if on_start is not None:
            on_start(len(done), 0)
        return outcome
    saved = time.monotonic()
    with executor:
        if on_start is not None:
            on_start(len(done), len(todo))
        # closing(): on Ctrl-C here, between two runs, the executor still stops its workers at once.
        with contextlib.closing(executor.run(functools.partial(train_one, job), todo)) as finished:
            try:
                for spec, result in finished:
                    error = _settle(run_path(out_dir, spec), result)
                    if error is None:
                        outcome.trained.append(run_path(out_dir, spec))
                        index.put(result.entry)
                    else:
                        outcome.failed[spec.run_id] = error
                    if on_run is not None:
                        on_run(spec, error)
                    if time.monotonic() - saved > INDEX_SAVE_SECONDS:
                        index.save()
                        saved = time.monotonic()
            finally:  # also on Ctrl-C: what finished stays indexed
                index.save()
    return outcome


def _executor(options: RunOptions, out_dir: Path) -> tuple[Executor, Job]:
    """The executor, and what its workers share: threads, the device as a worker sees it."""
    gpus_per_run = devices.check_gpus_per_run(options.gpus_per_run, options.device)
    job = Job(out_dir, options.data_root and options.data_root.absolute(), options.download,
              device=options.device, gpu_fraction=gpus_per_run or 1.0, collect=options.collect)
    if options.executor == "ray":
        from gfprobe.study.executors.ray import RayExecutor

        cpus = options.cpus_per_run or 1
        # Ray narrows each task's CUDA_VISIBLE_DEVICES to the GPU it assigned: "cuda" is that GPU.
        return (RayExecutor(options.address, cpus, gpus_per_run, options.jobs),
                dataclasses.replace(job, threads=cpus))
    jobs = options.jobs or 1
    job = dataclasses.replace(job, threads=options.cpus_per_run or threads_per_job(jobs))
    if jobs == 1 or not devices.is_cuda(options.device):
        return LocalExecutor(jobs), job
    slots = devices.plan_gpu_slots(options.device, jobs, gpus_per_run, devices.visible_gpus())
    return LocalExecutor(jobs, slots.gpus), dataclasses.replace(job, device="cuda")


def _settle(path: Path, result: RunOutcome) -> str | None:
    """Put a file sent back by its worker in place; check that a run said to be done is here."""
    if result.error is not None:
        return result.error
    if result.content is not None:
        try:
            publish_bytes(path, result.content)
        except OSError as exc:
            return f"trained, but its file could not be written to {path} ({exc.strerror or exc})"
    if not path.exists():  # a Ray worker on another machine wrote it to a disk this one cannot see
        return (f"trained, but its file is not in {path.parent} on this machine: the study folder must be on "
                "storage every Ray node shares, or add --collect to have the workers send their files back")
    return None


def publish_bytes(path: Path, content: bytes) -> None:
    """Write a file whole or not at all: a reader (or a resume) never sees half of it."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)


# Progress for logs: a line per this fraction of the runs to train, or per this many seconds.
LOG_EVERY_FRACTION = 0.05
LOG_EVERY_SECONDS: float | None = 60.0


class LogProgress:
    """Progress as plain lines, for output that is not a terminal (CI logs), where a live bar
    would show nothing until the end: one line per ``every`` runs finished or per ``interval``
    seconds, whichever comes first, and one when the last run finishes.

    ``interval=None`` turns the timed lines off (tests count lines, never wait); ``clock`` is
    injectable for the same reason. Use as a context manager: the timer thread stops on exit.
    """

    def __init__(self, total: int, echo: Callable[[str], None], interval: float | None = LOG_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.echo, self.interval, self.clock = total, echo, interval, clock
        self.done = self.failed = 0
        self.every = 1
        self._started = self._last_time = clock()
        self._last_done = 0
        self._lock = threading.Lock()  # the timer thread and the caller both print
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LogProgress:
        if self.interval is not None:
            self._thread = threading.Thread(target=self._tick, args=(self.interval,), name="gfprobe-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def on_start(self, done: int, todo: int) -> None:
        """An :data:`OnStart` callback."""
        with self._lock:
            self.done, self._last_done = done, done
            self.every = max(1, math.ceil(todo * LOG_EVERY_FRACTION))
            self.echo(f"gfprobe: {self.total} runs, {done} done before, {todo} to train")

    def on_run(self, spec: RunSpec, error: str | None) -> None:
        """An :data:`OnRun` callback."""
        with self._lock:
            self.done += 1
            self.failed += error is not None
            now = self.clock()
            overdue = self.interval is not None and now - self._last_time >= self.interval
            if self.done - self._last_done >= self.every or self.done >= self.total or overdue:
                self._line(now)

    def _line(self, now: float) -> None:
        self._last_time, self._last_done = now, self.done
        self.echo(f"gfprobe: {self.done}/{self.total} runs done, {self.failed} failed, "
                  f"{format_duration(now - self._started)} elapsed")

    def _tick(self, interval: float) -> None:
        while True:
            with self._lock:
                now = self.clock()
                wait = interval - (now - self._last_time)
                if wait <= 0:  # nothing printed for a whole interval: say we are still going
                    self._line(now)
                    wait = interval
            if self._stop.wait(wait):
                return


def format_duration(seconds: float) -> str:
    """``3m10s``, ``1h02m05s``, ``42s``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
