"""Running a study: which runs are done, which to (re)do, in how many processes, with progress.

A run is done when its file reads back with status ``complete`` and a ``test_acc`` metric. Any
other file of the study (interrupted, failed, killed mid-write) is deleted and its run trained
again, so rerunning the same command after a crash or Ctrl-C picks up where the study stopped.
Runs are independent: one failing is reported at the end and never stops the others.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gfprobe.errors import ConfigError, GfprobeError, RunFileError
from gfprobe.store.reader import open_run
from gfprobe.study import capacity, names
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


def check_study(study: Study, options: RunOptions) -> None:
    """Everything that can be checked before training: the device, every pair's capacity plan, and
    every data set's files (loaded once here, so a missing file stops the study before it starts)."""
    require_torch()
    from gfprobe.study import data  # imports torch: only a study that trains gets here

    if not study.runs:
        raise ConfigError("the study has no runs")
    check_device(options.device)
    pairs = {(s.arch, s.dataset, s.sparse_width, s.density, s.hidden_layers) for s in study.runs}
    for arch, dataset, width, density, hidden in sorted(pairs):
        capacity.plan_pair(arch, names.DATASETS[dataset], width, density, hidden)
    for dataset in sorted({spec.dataset for spec in study.runs}):
        data.load(dataset, options.data_root, options.download)


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


def check_device(device: str) -> None:
    """Refuse a device torch does not know, or CUDA where there is none."""
    import torch  # here, not at the top: only training needs torch, never planning or reporting

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch build or machine has no CUDA device; use --device cpu")


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
    try:
        (out_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # checked before by the CLI; this covers the library and a race
        raise ConfigError(f"cannot create {out_dir / RUNS_DIR} ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
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
