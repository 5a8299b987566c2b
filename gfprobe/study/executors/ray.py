"""Runs trained as Ray tasks: on a local Ray instance, or on a cluster (``--address``).

Each run is one task asking for ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs; Ray places
it and sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned, so ``--device cuda`` means the
task's own GPU. Only a window of tasks is in flight at once (twice what the cluster can run), so
a 50,000-run study neither floods the scheduler nor makes every wait scan 50,000 references.

A task is never retried by Ray: a run whose worker or node dies is reported as failed, and the
study's own resume (rerun the same command) redoes it from the start, as it does for the local
executor. Ctrl-C cancels the tasks still going on a cluster; a Ray instance started here is shut
down, its tasks with it.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from gfprobe.errors import ConfigError
from gfprobe.study.config import RunSpec
from gfprobe.study.executors import Finished, Work
from gfprobe.study.work import RunOutcome

INSTALL = "pip install 'gfprobe[ray]'"
CONNECT_SECONDS = 10.0  # to reach a HOST:PORT before handing it to Ray, which would retry for ever


def import_ray(address: str | None = None) -> ModuleType:
    """Ray, or one line saying how to install it; ready to reach the cluster at ``address``."""
    if address:
        _send_token_if_any()
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise ConfigError(f"--executor ray: Ray cannot be imported here ({exc})") from None
        raise ConfigError(f"--executor ray needs Ray, which is not installed here; install it with: {INSTALL}"
                          ) from None
    except ImportError as exc:  # a broken or half-installed Ray
        raise ConfigError(f"--executor ray: Ray cannot be imported here ({exc})") from None
    return ray


class RayExecutor:
    """Use as a context manager: entering connects (or starts a local Ray instance) and checks that
    the cluster can hold a run, so that a bad address or resource stops the study before it starts;
    leaving shuts down a Ray instance started here."""

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0.0,
                 in_flight: int | None = None) -> None:
        self.address = address  # None: a Ray instance already started in this process, or a new local one
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.in_flight = in_flight  # None: twice the runs the cluster can hold at once
        self._ray: ModuleType | None = None
        self._started_here = False
        self._fits = 0

    def __enter__(self) -> RayExecutor:
        ray = import_ray(self.address)
        if not ray.is_initialized():
            _connect(ray, self.address)
            self._started_here = True
        self._ray = ray
        try:
            self._fits = _runs_at_once(ray, self.cpus_per_run, self.gpus_per_run)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._started_here and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started_here = None, False

    def run(self, work: Work, todo: Sequence[RunSpec]) -> Finished:
        if self._ray is None:
            raise RuntimeError("RayExecutor.run outside 'with RayExecutor(...)'")
        if todo:
            yield from self._run(self._ray, work, todo)

    def _run(self, ray: ModuleType, work: Work, todo: Sequence[RunSpec]) -> Finished:
        task = ray.remote(_call).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                        max_retries=0, retry_exceptions=False)
        shared = ray.put(work)  # sent once, not with every task
        waiting = iter(todo)
        pending: dict[Any, RunSpec] = {}
        width = self.in_flight or 2 * self._fits
        try:
            _submit(task, shared, waiting, pending, width)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    spec = pending.pop(ref)
                    yield spec, _outcome(ray, ref)
                _submit(task, shared, waiting, pending, width)
        finally:
            # Ctrl-C, or the caller stopped early: stop what is still going. A Ray instance started
            # here is shut down on leaving, its tasks with it; cancelling them first can race a
            # task's reply and crash Ray's driver with its own stack trace ("Tried to complete task
            # that was not pending": ray-project/ray#54846, seen here on Ctrl-C), so only the tasks
            # of a cluster that outlives this process are cancelled.
            if not self._started_here:
                for ref in pending:
                    ray.cancel(ref, force=True)


def _connect(ray: ModuleType, address: str | None) -> None:
    """Connect to the cluster at ``address``, or start a local instance. Ray itself retries an
    address where nothing listens for ever, so a HOST:PORT is tried first, with a deadline."""
    if address and ":" in address and "://" not in address:
        _check_reachable(address)
    local = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address, logging_level="error", **local)
    except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError, ... for a bad address
        where = f"at {address}" if address else "on this machine"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"--executor ray: cannot start or reach a Ray cluster {where} ({type(exc).__name__}: "
                          f"{first}); start one with 'ray start --head', then pass --address auto or "
                          "HOST:PORT") from None


def _send_token_if_any() -> None:
    """Present this machine's Ray token to the cluster. ``ray start --head`` turns token
    authentication on by itself when a token exists (as it does after any local ``ray.init()``),
    but ``ray.init(address=HOST:PORT)`` only sends the token in ``RAY_AUTH_MODE=token``, and
    otherwise retries the refused connection for half a minute (seen with Ray 2.60; reported in
    the review of ray-project/ray#64755). Ray reads the mode when it is imported, so this comes
    first. A cluster without authentication ignores the token."""
    has_token = any(os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) or (
        Path.home() / ".ray" / "auth_token").is_file()
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            return
    except ValueError:
        raise ConfigError(f"--address {address!r}: the port must be a number, e.g. HOST:6379") from None
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                          "check the head node's address ('ray status' on it), or pass --address auto on a "
                          "node of the cluster") from None


def _runs_at_once(ray: ModuleType, cpus: int, gpus: float) -> int:
    """Runs the cluster can hold at once; refuses resources that no node has, for which Ray would
    wait for ever."""
    nodes: list[dict[str, float]] = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    fits = [_runs_on(node, cpus, gpus) for node in nodes]
    if gpus and not any(node.get("GPU", 0) for node in nodes):
        raise ConfigError("--device cuda: the Ray cluster has no GPU; use --device cpu, or add nodes with GPUs")
    if not any(fits):
        biggest: dict[str, float] = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise ConfigError(
            f"--executor ray: no node of the Ray cluster has {cpus} CPU(s)" + (f" and {gpus:g} GPU" if gpus else "")
            + f" for a run (the largest has {biggest.get('CPU', 0):g} CPU(s) and {biggest.get('GPU', 0):g} GPU(s));"
            " lower --cpus-per-run or --gpus-per-run, or add such a node")
    return sum(fits)


def _runs_on(resources: dict[str, float], cpus: int, gpus: float) -> int:
    by_cpu = math.floor(resources.get("CPU", 0) / cpus + 1e-9)
    by_gpu = math.floor(resources.get("GPU", 0) / gpus + 1e-9) if gpus else by_cpu
    return min(by_cpu, by_gpu)


def _submit(task: Any, work: Any, waiting: Iterator[RunSpec], pending: dict[Any, RunSpec], width: int) -> None:
    while len(pending) < width:
        spec = next(waiting, None)
        if spec is None:
            return
        pending[task.remote(work, spec)] = spec


def _call(work: Work, spec: RunSpec) -> RunOutcome:
    """The task: the same work as the local executor's."""
    return work(spec)


def _outcome(ray: ModuleType, ref: Any) -> RunOutcome:
    """The task's outcome, or the reason it has none: its worker or node died, it was cancelled."""
    try:
        outcome: RunOutcome = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the work raised, which it never should: say what
        return RunOutcome(f"the Ray task failed: {type(exc.cause).__name__}: {exc.cause}")
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return RunOutcome(f"Ray lost the run ({type(exc).__name__}: {first}); its worker or node died, "
                          "e.g. killed or out of memory; rerun the same command to redo it")
    return outcome
