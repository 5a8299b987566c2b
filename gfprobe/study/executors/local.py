"""Runs trained on this machine: in this process, or in a pool of worker processes.

Workers are spawned, not forked (forking a process that has started torch's thread pools can
deadlock). On CUDA each worker is pinned to its GPU before it imports torch
(:mod:`gfprobe.study.devices`). A worker that dies (killed, out of memory) breaks Python's pool:
the runs that were training then are tried again one at a time, so that the one that kills its
worker is reported as failed and the others are not; the rest go on in a fresh pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from gfprobe.study.config import RunSpec
from gfprobe.study.devices import VISIBLE
from gfprobe.study.executors import Finished, Work
from gfprobe.study.work import RunOutcome

WORKER_DIED = ("its worker process died (killed, or out of memory) while it trained, and again when it was "
               "tried alone; rerun the same command to try it again")


@dataclass(frozen=True)
class LocalExecutor:
    jobs: int = 1
    gpus: tuple[str, ...] = ()  # worker k's CUDA_VISIBLE_DEVICES entry; empty: workers are not pinned

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass  # each pool is shut down by the run that made it

    def run(self, work: Work, todo: Sequence[RunSpec]) -> Finished:
        if not self.gpus and (self.jobs == 1 or len(todo) <= 1):
            for spec in todo:
                yield spec, work(spec)
            return
        left = list(todo)
        while left:
            finished: list[RunSpec] = []
            try:
                for spec, outcome in self._pool_round(work, left, self.jobs):
                    finished.append(spec)
                    yield spec, outcome
                return
            except _WorkerDied as died:
                unfinished = [spec for spec in left if spec not in finished]
                # Who was training is announced by each worker; if nobody's announcement arrived,
                # every run left is a suspect, so that this loop always ends.
                suspects = [spec for spec in unfinished if spec.run_id in died.started] or unfinished
                left = [spec for spec in unfinished if spec not in suspects]
            # One of the runs that were training killed its worker: each is tried again alone,
            # so the one that does it again is known, and the others are not blamed.
            for spec in suspects:
                yield spec, self._alone(work, spec)

    def _alone(self, work: Work, spec: RunSpec) -> RunOutcome:
        try:
            for _, outcome in self._pool_round(work, [spec], 1):
                return outcome
        except _WorkerDied:
            pass
        return RunOutcome(WORKER_DIED)

    def _pool_round(self, work: Work, todo: Sequence[RunSpec], jobs: int) -> Finished:
        context = multiprocessing.get_context("spawn")
        # Run ids, as workers start them: who was training when one died. A SimpleQueue writes at
        # put(), not from a feeder thread that a dying worker would take down with its message.
        started = context.SimpleQueue()
        gpus = context.Queue()
        for gpu in self.gpus:
            gpus.put(gpu)
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker,
                                   initargs=(started, gpus if self.gpus else None))
        try:
            futures: dict[Future[RunOutcome], RunSpec] = {
                pool.submit(_announced, work, spec): spec for spec in todo}
            training: set[str] = set()  # read as results come, so the pipe never fills
            for future in as_completed(futures):
                training |= _drain(started)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    raise _WorkerDied(training | _drain(started)) from None
                training.discard(futures[future].run_id)
                yield futures[future], outcome
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


class _WorkerDied(Exception):
    def __init__(self, started: set[str]) -> None:
        super().__init__(f"a worker died; runs started: {sorted(started)}")
        self.started = started


def _drain(queue: Any) -> set[str]:
    found = set()
    with contextlib.suppress(OSError, ValueError, EOFError):
        while not queue.empty():
            found.add(queue.get())
    return found


_started: Any = None  # in a worker: the queue its runs are announced on


def _start_worker(started: Any, gpus: Any) -> None:
    """In a new worker, before torch is imported: where to announce runs, and, on CUDA, the one GPU
    this worker may see."""
    global _started
    _started = started
    if gpus is not None:
        os.environ[VISIBLE] = gpus.get()


def _announced(work: Work, spec: RunSpec) -> RunOutcome:
    _started.put(spec.run_id)
    return work(spec)
