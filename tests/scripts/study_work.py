"""Work functions for the executors' tests, importable by worker processes (this folder is put on
their ``sys.path``): the study's real work, with one run made to fail in a chosen way."""

from __future__ import annotations

import os

from gfprobe.study.config import RunSpec
from gfprobe.study.work import Job, RunOutcome, train_one


def raise_for_seed_1(job: Job, spec: RunSpec) -> RunOutcome:
    """The real training, except that seed 1's sparse run raises inside the worker."""
    if spec.seed == 1 and spec.sparse:
        raise RuntimeError("injected failure")
    return train_one(job, spec)


def kill_worker_for_seed_1(job: Job, spec: RunSpec) -> RunOutcome:
    """The real training, except that seed 1's sparse run kills its own worker process."""
    if spec.seed == 1 and spec.sparse:
        os._exit(9)
    return train_one(job, spec)


def visible_gpus(job: Job, spec: RunSpec) -> RunOutcome:
    """No training: reports, as its error, the GPUs the worker was pinned to and the device it got."""
    return RunOutcome(f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {job.device}")
