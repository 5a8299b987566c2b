"""Running a study: which runs are done, which to (re)do, in how many processes, with progress.

A run is done when its file reads back with status ``complete`` and a ``test_acc`` metric. Any
other file of the study (interrupted, failed, killed mid-write) is deleted and its run trained
again, so rerunning the same command after a crash or Ctrl-C picks up where the study stopped.
Runs are independent: one failing is reported at the end and never stops the others.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gfprobe.errors import GfprobeError, RunFileError
from gfprobe.store.reader import open_run
from gfprobe.study.config import RunSpec, Study

RUNS_DIR = "runs"


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
    jobs: int = 1
    device: str = "cpu"


def run_path(out_dir: Path, spec: RunSpec) -> Path:
    return out_dir / RUNS_DIR / f"{spec.run_id}.h5"


def is_done(path: Path) -> bool:
    """The run finished: complete, and evaluated at least once."""
    if not path.exists():
        return False
    try:
        with open_run(path) as run:
            return run.metadata.get("status") == "complete" and "test_acc" in run.metrics()
    except RunFileError:
        return False


def plan_work(study: Study, out_dir: Path) -> tuple[list[RunSpec], list[Path]]:
    """(runs to train, files already done); unfinished files are removed so their runs restart."""
    todo, done = [], []
    for spec in study.runs:
        path = run_path(out_dir, spec)
        if is_done(path):
            done.append(path)
            continue
        path.unlink(missing_ok=True)
        todo.append(spec)
    return todo, done


def threads_per_job(jobs: int) -> int:
    """Split the machine's cores between the jobs, so parallel runs do not oversubscribe it."""
    return max(1, (os.cpu_count() or 1) // jobs)


OnStart = Callable[[int, int], None]  # (runs already done, runs to train), once planned
OnRun = Callable[[RunSpec, str | None], None]  # (run, error or None), after each run


def run_study(study: Study, out_dir: Path, options: RunOptions, on_start: OnStart | None = None,
              on_run: OnRun | None = None) -> StudyOutcome:
    """Train every run of ``study`` not yet done under ``out_dir``."""
    if options.jobs < 1:
        raise GfprobeError(f"--jobs must be at least 1, got {options.jobs}")
    (out_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    todo, done = plan_work(study, out_dir)
    if on_start is not None:
        on_start(len(done), len(todo))
    outcome = StudyOutcome(done_before=done)
    threads = threads_per_job(options.jobs)
    for spec, error in _execute(todo, out_dir, options, threads):
        if error is None:
            outcome.trained.append(run_path(out_dir, spec))
        else:
            outcome.failed[spec.run_id] = error
        if on_run is not None:
            on_run(spec, error)
    return outcome


def _execute(todo: Sequence[RunSpec], out_dir: Path, options: RunOptions,
             threads: int) -> Iterator[tuple[RunSpec, str | None]]:
    if options.jobs == 1 or len(todo) <= 1:
        for spec in todo:
            yield spec, _train_one(spec, out_dir, options, threads)
        return
    with _pool(options.jobs) as pool:
        futures: dict[Future[str | None], RunSpec] = {
            pool.submit(_train_one, spec, out_dir, options, threads): spec for spec in todo
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


@contextmanager
def _pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _train_one(spec: RunSpec, out_dir: Path, options: RunOptions, threads: int) -> str | None:
    """Train one run; returns None on success, else a one-line reason. Never raises."""
    from gfprobe.study.train import train_run  # torch is imported here, in the worker only

    path = run_path(out_dir, spec)
    try:
        train_run(spec, path, options.data_root, options.download, threads, options.device)
    except GfprobeError as exc:
        return str(exc)
    except Exception as exc:  # a run must not take the study down; the reason is reported
        return f"{type(exc).__name__}: {exc}"
    if not is_done(path):  # gfprobe never stops training, so a failed recording shows only here
        return f"trained, but {path} was not recorded completely (see gfprobe's warning above)"
    return None
