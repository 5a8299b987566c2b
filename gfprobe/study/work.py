"""One run of a study as a worker trains it, wherever that is: this process, a local worker
process, or a Ray task on another machine. It never raises: whatever happens comes back as a
:class:`RunOutcome`, so that one run can never take the study down.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfprobe.analysis.index import IndexEntry, StudyIndex, file_key, options_key, summarise_for_index
from gfprobe.errors import GfprobeError, RunFileError
from gfprobe.store.reader import open_run
from gfprobe.study.config import RunSpec
from gfprobe.study.devices import limit_gpu_memory

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Job:
    """What every run of one invocation shares; sent to each worker (so: small and picklable)."""

    out_dir: Path  # absolute: a Ray worker does not start in the driver's folder
    data_root: Path | None = None
    download: bool = False
    threads: int = 1  # torch threads per run
    device: str = "cpu"  # as the worker sees it: a pinned worker's one GPU is "cuda"
    gpu_fraction: float = 1.0  # the share of its GPU's memory a run may take
    collect: bool = False  # write to the worker's own disk and send the file back


@dataclass(frozen=True)
class RunOutcome:
    """What one run did: ``error`` None on success, else one line; ``content``, the run file's bytes
    when the worker sent it back (``collect``); ``entry``, its summary for the study index, made
    where the file was just written (so the driver of a 50,000-run study reads no file for it)."""

    error: str | None = None
    content: bytes | None = None
    entry: IndexEntry | None = None


def run_path(out_dir: Path, spec: RunSpec) -> Path:
    return out_dir / RUNS_DIR / f"{spec.run_id}.h5"


def is_done(path: Path) -> bool:
    """The run finished: complete, and evaluated at least once."""
    return finished_attrs(path) is not None


def finished_attrs(path: Path, index: StudyIndex | None = None) -> dict[str, Any] | None:
    """The run attributes of a finished run's file (complete, evaluated at least once); None for
    any other file, or none. The study's ``index``, where it holds the file as it is now, answers
    without opening it: resuming a large study then reads only the files the index lacks."""
    if index is not None:
        summary = index.get(path, options_key(), file_key(path))
        if summary is not None:
            return dict(summary.attrs) if summary.status == "complete" and "test_acc" in summary.metrics else None
    if not path.exists():
        return None
    try:
        with open_run(path) as run:
            done = run.metadata.get("status") == "complete" and "test_acc" in run.metrics()
            return dict(run.attrs) if done else None
    except RunFileError:
        return None


def train_one(job: Job, spec: RunSpec) -> RunOutcome:
    """Train one run into its file (or, collecting, into a temporary one whose bytes come back)."""
    if not job.collect:
        path = run_path(job.out_dir, spec)
        try:  # what an attempt killed with its worker left: this run is being trained again
            path.unlink(missing_ok=True)
        except OSError as exc:
            return RunOutcome(f"cannot remove {path}, left by an earlier attempt ({exc.strerror or exc})")
        error = _train(job, spec, path)
        return RunOutcome(error) if error is not None else RunOutcome(entry=summarise_for_index(path))
    folder = Path(tempfile.mkdtemp(prefix="gfprobe-run-"))
    try:
        path = folder / f"{spec.run_id}.h5"
        error = _train(job, spec, path)
        return RunOutcome(error) if error is not None else RunOutcome(content=path.read_bytes())
    except OSError as exc:  # reading the finished file back
        return RunOutcome(f"trained, but its file could not be read back to send it ({exc})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train(job: Job, spec: RunSpec, path: Path) -> str | None:
    """None on success, else a one-line reason."""
    try:
        from gfprobe.study.train import train_run  # torch is imported here, in the worker only

        limit_gpu_memory(job.device, job.gpu_fraction)
        train_run(spec, path, job.data_root, job.download, job.threads, job.device)
    except GfprobeError as exc:
        return str(exc)
    except Exception as exc:  # a run must not take the study down; the reason is reported
        return f"{type(exc).__name__}: {exc}"
    if not is_done(path):  # gfprobe never stops training, so a failed recording shows only here
        return f"trained, but {path} was not recorded completely (see gfprobe's warning above)"
    return None
