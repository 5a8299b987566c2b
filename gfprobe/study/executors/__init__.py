"""Where a study's runs train. Every executor maps the same work (:func:`gfprobe.study.work.train_one`
with the invocation's :class:`~gfprobe.study.work.Job`) over the runs to train, and yields each
run with its outcome as it finishes, in any order; planning, resuming, progress and reporting stay
in :mod:`gfprobe.study.runner`, the same for all of them.

- ``local``: in this process (one job), or a pool of worker processes on this machine.
- ``ray``: one Ray task per run, on a local Ray instance or a cluster (:mod:`.ray`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Protocol

from gfprobe.study.config import RunSpec
from gfprobe.study.work import RunOutcome

EXECUTORS = ("local", "ray")

Work = Callable[[RunSpec], RunOutcome]  # picklable: a module-level function, or a partial of one
Finished = Generator[tuple[RunSpec, RunOutcome], None, None]


class Executor(Protocol):
    """Entered before the runs are counted (so a cluster that cannot run them stops the study
    before it starts), left after the last one."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def run(self, work: Work, todo: Sequence[RunSpec]) -> Finished:
        """Train every run of ``todo``; yield each with its outcome as it finishes. Closing the
        iterator early (Ctrl-C) stops the runs still going."""
        ...
