"""Independent CPU-bound analysis jobs in worker processes, one per core.

The bootstrap intervals of a correlation table are independent, and at 50,000 runs each takes
seconds, much of it in matrix products. Each worker must then use one BLAS thread: with the BLAS
library's own pool of threads in every worker, each core runs several, and OpenBLAS's threads
spin while they wait (measured at 50,000 runs on 2 cores: 102 s forked with their pools against
27 s with one thread each, and 40 s in this process alone). The workers are forked (a started
afresh one would run the caller's script again, which a script without a ``__main__`` guard
does not survive) and set their BLAS to one thread; where this process's BLAS cannot be told so
(no OpenBLAS found, no fork), the jobs run here, one after the other.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MAX_WORKERS = 8
# OpenBLAS's setter of its thread count, as NumPy's and SciPy's wheels (symbols prefixed, 64-bit
# integers or not) and system builds name it.
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def run_all(function: Callable[..., T], jobs: Sequence[tuple[Any, ...]], parallel: bool = True) -> list[T]:
    """``function(*job)`` for every job, in order; in worker processes when ``parallel`` and there
    are several jobs, cores, and a way to give each worker one BLAS thread."""
    workers = min(cores(), len(jobs), MAX_WORKERS)
    if (not parallel or workers < 2 or "fork" not in multiprocessing.get_all_start_methods()
            or not _blas_thread_setters()):
        return [function(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_one_blas_thread) as pool:
        futures = [pool.submit(function, *job) for job in jobs]
        return [future.result() for future in futures]


def _one_blas_thread() -> None:
    for setter in _blas_thread_setters():
        setter(1)


@functools.cache
def _blas_thread_setters() -> tuple[Callable[[int], None], ...]:
    """The thread-count setters of every OpenBLAS this process has loaded (found among the
    libraries it mapped: Linux only); none where none can be found."""
    import numpy  # noqa: F401  # its BLAS must be loaded to be found

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.split()[-1].lower()})
    except OSError:
        return ()
    setters = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                setters.append(setter)
                break
    return tuple(setters)
