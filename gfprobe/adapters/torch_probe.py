"""The PyTorch adapter: optimizer step hooks that feed the recorder.

What is recorded is the gradient the optimizer consumes, read in an optimizer step pre-hook
(``torch_hooks``): after gradient accumulation, after DDP's all-reduce, after ``GradScaler``
unscaling and after any clipping the user applies before ``step()``; for ``step(closure)``, when
the closure, which computes that gradient, first returns. That is the gradient that moves the
weights, so it is the one whose flow matters. Steps that ``GradScaler`` skips for inf/NaN never
reach ``optimizer.step``; a wrapper around ``GradScaler.step`` notices and records them as
skipped, with the (unscaled, non-finite) statistics that caused the skip.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gfprobe.adapters import torch_hooks, torch_remask
from gfprobe.adapters.torch_measure import MeasurementStream
from gfprobe.adapters.torch_params import TrackedParam, discover_roots, refresh_masks, track
from gfprobe.adapters.torch_stats import DEFAULT_KERNEL, CpuStats, DeviceStats, make_stats
from gfprobe.capture import session
from gfprobe.capture.metadata import BATCH_STEPS, FLUSH_SECONDS, base_metadata
from gfprobe.capture.recorder import PendingBlock, Recorder
from gfprobe.errors import ConfigError
from gfprobe.outpath import check_writable
from gfprobe.schedule import Schedule, as_schedule
from gfprobe.store import schema
from gfprobe.store.writer import stream_attrs_problem

log = logging.getLogger("gfprobe")



@dataclass
class _Stream:
    index: int
    tracked: list[TrackedParam]
    kernel: CpuStats | DeviceStats
    step: int = 0  # optimizer step attempts so far, AMP-skipped ones included
    rows: list[Any] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    hook_times: list[float] = field(default_factory=list)  # gfprobe's own seconds, per row
    unstamped: float = 0.0  # seconds gfprobe spent in the training thread since the last row was taken
    last_flush: float = field(default_factory=time.monotonic)

    def stamp(self, started: float) -> float:
        """Charge the row just taken with gfprobe's time since the previous row (the steps the
        schedule left out included) up to now; returns now, where the next charge starts."""
        now = time.perf_counter()
        self.hook_times.append(self.unstamped + now - started)
        self.unstamped = 0.0
        return now


class Probe:
    """Records gradient statistics of one model's (or every) optimizer into one run file.

    Create it with :func:`gfprobe.watch`. Use as a context manager or call :meth:`close`; an
    unclosed probe closes itself when the interpreter exits.
    """

    def __init__(
        self,
        recorder: Recorder,
        *,
        every: int | Schedule = 1,
        masks: str | Mapping[str, torch.Tensor] = "auto",
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        all_ranks: bool = False,
    ) -> None:
        self._recorder = recorder
        self._all_ranks = all_ranks
        self._schedule = as_schedule(every)
        self._masks = masks
        self._model = model
        self._optimizer = optimizer
        self._model_params: set[int] = {id(p) for p in model.parameters()} if model is not None else set()
        self._streams: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Stream] = weakref.WeakKeyDictionary()
        self._ignored: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._scaler_original: Callable[..., Any] | None = None
        self._fired: torch.optim.Optimizer | None = None
        # step(closure) calls in progress: recorded when their closure first returns.
        self._closure_steps: weakref.WeakKeyDictionary[torch.optim.Optimizer, _ClosureStep] = (
            weakref.WeakKeyDictionary())
        self._active = False
        self._closed = False
        self._error: str | None = None  # why fail() stopped recording
        # Modules that got a mask since the last recorded step (see torch_remask), held weakly.
        self._remask: list[weakref.ref[nn.Module]] = []
        self._measurements: list[MeasurementStream] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Probe:
        torch_hooks.attach(self)
        self._patch_grad_scaler()
        torch_remask.listen(self._masks_changed)
        session.activate(self._recorder)
        atexit.register(self.close)
        self._active = True
        return self

    @property
    def path(self) -> Path | None:
        """Where the run is written (None until the first optimizer step)."""
        return self._recorder.path or (self._recorder.requested_path if self._streams else None)

    @property
    def recording(self) -> bool:
        """Whether this probe records now (started, not closed, not failed, in its own process)."""
        return self._active and os.getpid() == self._recorder.pid

    def measurement_stream(self, name: str, params: Iterable[torch.Tensor], attrs: Mapping[str, Any] | None = None,
                           every: int | Schedule = 1) -> MeasurementStream:
        """A stream of its own in the run file for gradients no optimizer consumes (e.g. a fixed
        probe batch's), named ``name``, measuring ``params`` (their names and masks found as for
        the optimizer's), with stream attributes ``attrs`` (e.g. ``{"protocol": "probe-batch"}``)
        and a schedule ``every`` over optimizer steps (:meth:`MeasurementStream.due`).

        Raises:
            ConfigError: an empty or too long name, no parameters, attributes the file cannot hold.
        """
        if not isinstance(name, str) or not 0 < len(name.encode()) <= schema.STREAM_COLUMNS["optimizer"].itemsize:
            raise ConfigError(f"measurement_stream: name {name!r} must be 1 to "
                              f"{schema.STREAM_COLUMNS['optimizer'].itemsize} bytes of text, e.g. 'probe'")
        params = list(params)
        if not params or not all(isinstance(p, torch.Tensor) for p in params):
            raise ConfigError(f"measurement_stream {name!r}: params must be a non-empty list of tensors, "
                              "e.g. model.parameters()")
        problem = stream_attrs_problem(attrs or {})
        if problem is not None:
            raise ConfigError(f"measurement_stream {name!r}: {problem}")
        roots = [self._model] if self._model is not None else discover_roots()
        stream = MeasurementStream(self, name, track(params, roots, self._masks), attrs or {}, as_schedule(every))
        self._measurements.append(stream)
        return stream

    def _may_add_measurements(self, closing: bool) -> bool:
        """Measurement streams join the file after the optimizer's (which then keeps index 0); a
        process whose optimizer is never recorded (a DDP rank other than 0) adds them only when it
        is a whole run of its own."""
        return bool(self._streams) or (closing and distributed_rank()[1] == 1)

    @property
    def failure(self) -> str | None:
        """Why recording stopped early (``None`` while it works): the run file, if any, says ``failed``."""
        if self._error is not None:
            return self._error
        error = self._recorder.failed
        return None if error is None else f"{type(error).__name__}: {error}"

    def close(self, status: str = "complete") -> Path | None:
        """Flush every recorded step, finalise the file and remove all hooks. Idempotent."""
        if self._closed:
            return self._recorder.path
        self._closed = True
        self._detach()
        if os.getpid() == self._recorder.pid:
            for stream in list(self._streams.values()):
                self._flush(stream)
            for measurement in self._measurements:
                measurement.flush(closing=True)
            self._recorder.close("failed" if self._recorder.failed else status)
        atexit.unregister(self.close)
        return self._recorder.path

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close("interrupted" if interrupted else "failed" if exc_type else "complete")

    def _detach(self) -> None:
        self._active = False
        torch_hooks.detach(self)
        torch_remask.unlisten(self._masks_changed)
        session.deactivate(self._recorder)
        self._unpatch_grad_scaler()

    # -- hooks (the hot path; called by torch_hooks) -------------------------------------------
    def _observes(self, optimizer: torch.optim.Optimizer) -> bool:
        return self._optimizer is None or optimizer is self._optimizer

    def before_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> torch_hooks.StepArgs | None:
        """At ``optimizer.step()``, eagerly: record now, or wrap a closure that computes the gradient."""
        if not self._observes(optimizer):
            return None
        self._fired = optimizer
        self._closure_steps.pop(optimizer, None)  # left by a step whose closure raised
        closure = torch_hooks.closure_of(args, kwargs)
        if closure is None:
            self._record(optimizer, skipped=False)
            return None
        # step(closure): the gradient step() consumes does not exist yet. The closure computes it
        # (forward, backward, and in Lightning accumulation's last micro-batch and clipping), so
        # it is wrapped and the statistics are read when it returns.
        step = _ClosureStep(self, optimizer, closure)
        self._closure_steps[optimizer] = step
        return torch_hooks.with_closure(args, kwargs, step)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        step = self._closure_steps.pop(optimizer, None)
        if step is not None and not step.recorded:
            # An optimizer that never called its closure consumed the gradient already in place;
            # step() leaves .grad as it was, so it is still the one consumed.
            self._record(optimizer, skipped=False)

    def record_compiled(self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor | None]) -> None:
        """A step of compiled code, with the gradients it consumes (see ``torch_hooks``)."""
        if self._observes(optimizer):
            self._fired = optimizer
            self._record(optimizer, skipped=False, grads=grads)

    def _record(self, optimizer: torch.optim.Optimizer, skipped: bool,
                grads: list[torch.Tensor | None] | None = None) -> None:
        """``grads``: the gradients in the optimizer's parameter order, when they are not (yet)
        the parameters' ``.grad`` attributes, as inside compiled code."""
        if not self.recording:
            return  # closed, or a forked child (e.g. a DataLoader worker) inherited the hook
        started = time.perf_counter()
        try:
            stream = self._streams.get(optimizer)
            if stream is None:
                if optimizer in self._ignored or not self._wants(optimizer):
                    return
                stream = self._register(optimizer)
                if stream is None:
                    return
            if self._remask:
                self._take_up_new_masks()
            step = stream.step
            stream.step += 1
            if stream.index == 0:
                self._recorder.current_step = stream.step
            if self._schedule(step):
                stream.rows.append(stream.kernel.row(grads))
                stream.steps.append(step)
                stream.times.append(self._recorder.elapsed())
                stream.skipped.append(int(skipped))
                started = stream.stamp(started)
            # Checked at every step, recorded or not, so a row waits at most FLUSH_SECONDS.
            if stream.rows and (len(stream.rows) >= BATCH_STEPS
                                or time.monotonic() - stream.last_flush >= FLUSH_SECONDS):
                self._flush(stream)
            stream.unstamped += time.perf_counter() - started
        except Exception as exc:
            self.fail(exc)

    def _masks_changed(self, module: nn.Module) -> None:
        """Called when pruning or parametrize puts a mask on ``module``: taken up at the next step."""
        self._remask.append(weakref.ref(module))

    def _take_up_new_masks(self) -> None:
        modules, self._remask = [m() for m in self._remask], []
        for module in {id(m): m for m in modules if m is not None}.values():
            for stream in list(self._streams.values()):
                for index in refresh_masks(stream.tracked, module, self._masks):
                    self._recorder.set_mask_source(stream.index, index, stream.tracked[index].info.mask_source)

    def _wants(self, optimizer: torch.optim.Optimizer) -> bool:
        if not self._model_params:
            return True
        wanted = any(id(p) in self._model_params for g in optimizer.param_groups for p in g["params"])
        if not wanted:
            self._ignored.add(optimizer)
        return wanted

    def _register(self, optimizer: torch.optim.Optimizer) -> _Stream | None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        roots = [self._model] if self._model is not None else discover_roots()
        tracked = track(params, roots, self._masks)
        if not self._claim_file(optimizer, tracked):
            self._ignored.add(optimizer)
            return None
        index = self._recorder.add_stream(type(optimizer).__name__, [t.info for t in tracked])
        stream = _Stream(index, tracked, make_stats(tracked))
        self._streams[optimizer] = stream
        # The streams are keyed weakly, so a probe never keeps an optimizer alive; when one is
        # collected before close() (a local of a script's main(), say), its rows are written first.
        weakref.finalize(optimizer, self._flush_gone, stream)
        return stream

    def _claim_file(self, optimizer: torch.optim.Optimizer, tracked: list[TrackedParam]) -> bool:
        """Decide whether this process records ``optimizer``, and into which file.

        Unsharded data parallelism (DDP) leaves every rank the same averaged gradient, so rank 0
        alone records (every rank with ``all_ranks``, each into ``<stem>.rank<r>.h5``). Sharded
        training leaves each rank a shard: every rank records its shard's statistics into its own
        rank file, and merging the files gives the full gradient's (see ``torch_local``).
        """
        rank, world = distributed_rank()
        sharded = any(t.sharding is not None for t in tracked)
        if world == 1:
            return True
        layout = "sharded" if sharded else "replica" if self._all_ranks else "rank0"
        accepted = self._recorder.use_layout(rank, world, layout)  # the first optimizer fixes it on every rank
        if layout == "rank0" and rank != 0:
            return False
        if not accepted:
            log.warning("gfprobe: optimizer %s is %s, unlike the run's first optimizer; it is not recorded",
                        type(optimizer).__name__, "sharded" if sharded else "not sharded")
            return False
        return True

    def _flush_gone(self, stream: _Stream) -> None:
        if not self._closed and os.getpid() == self._recorder.pid:
            with contextlib.suppress(Exception):  # runs inside garbage collection: never raise
                self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        if not stream.rows:
            return
        stats: np.ndarray | Callable[[], np.ndarray]
        stats = _async_to_host(stream.rows) if isinstance(stream.kernel, DeviceStats) else np.stack(stream.rows)
        self._recorder.add_block(PendingBlock(
            stream.index, np.asarray(stream.steps, dtype=np.int64), np.asarray(stream.times),
            np.asarray(stream.skipped, dtype=np.uint8), stats, np.asarray(stream.hook_times)))
        stream.rows, stream.steps, stream.times, stream.skipped, stream.hook_times = [], [], [], [], []
        stream.last_flush = time.monotonic()
        if self._recorder.failed is not None:
            self._detach()

    def fail(self, exc: BaseException) -> None:
        """Stop recording for good, keep what was recorded, and let training go on."""
        log.warning("gfprobe: recording stopped after an internal error (%s: %s); training goes on",
                    type(exc).__name__, exc)
        self._closed = True
        self._error = f"{type(exc).__name__}: {exc}"
        self._detach()
        atexit.unregister(self.close)
        # Rows already computed are valid: keep them. The failed step itself has no row.
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                self._flush(stream)
        for measurement in self._measurements:
            with contextlib.suppress(Exception):
                measurement.flush(closing=True)
        self._recorder.close("failed", error=f"{type(exc).__name__}: {exc}")

    # -- AMP: steps GradScaler skips never reach optimizer.step -----------------------------
    def _patch_grad_scaler(self) -> None:
        scaler_cls = torch.amp.GradScaler
        original = scaler_cls.step
        probe = self

        def step(scaler: Any, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling():  # inside compiled code, the op records the step
                return original(scaler, optimizer, *args, **kwargs)
            probe._fired = None
            result = original(scaler, optimizer, *args, **kwargs)
            if probe._active and probe._fired is not optimizer and probe._observes(optimizer):
                probe._record(optimizer, skipped=True)
            return result

        step.__wrapped__ = original  # type: ignore[attr-defined]
        scaler_cls.step = step  # type: ignore[method-assign,assignment]
        self._scaler_original = original
        self._scaler_wrapper = step

    def _unpatch_grad_scaler(self) -> None:
        if self._scaler_original is None:
            return
        # Restore only if nothing patched on top of us since; otherwise our wrapper stays in the
        # chain and passes through, because this probe is no longer active.
        if torch.amp.GradScaler.step is self._scaler_wrapper:  # type: ignore[comparison-overlap]
            torch.amp.GradScaler.step = self._scaler_original  # type: ignore[method-assign]
        self._scaler_original = None


class _ClosureStep:
    """The closure of one ``step(closure)`` call, recording the gradient when it first returns.

    One optimizer step is one recorded step. Optimizers that evaluate the closure several times
    per step (LBFGS's line search) consume the gradient of the first evaluation, taken at the
    weights the step starts from, to set their first direction; that is the one recorded, the
    analogue of what a first-order optimizer consumes. Later evaluations pass straight through.
    """

    def __init__(self, probe: Probe, optimizer: torch.optim.Optimizer, closure: Callable[[], Any]) -> None:
        self._probe = probe
        self._optimizer = weakref.ref(optimizer)
        self._closure = closure
        self.recorded = False

    def __call__(self) -> Any:
        result = self._closure()
        if not self.recorded:
            self.recorded = True
            optimizer = self._optimizer()
            if optimizer is not None:
                self._probe._record(optimizer, skipped=False)
        return result


def _async_to_host(rows: list[torch.Tensor]) -> Callable[[], np.ndarray]:
    """Start one non-blocking copy of a batch of device rows; the writer thread waits for it."""
    stacked = torch.stack(rows)
    host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    done = torch.cuda.Event()  # type: ignore[no-untyped-call]
    done.record()

    def wait() -> np.ndarray:
        done.synchronize()
        _ = stacked  # keep the device buffer alive until the copy finished
        return host.numpy()

    return wait


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's, else torchrun's environment."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        rank = int(os.environ.get("RANK") or 0)
        return rank, max(int(os.environ.get("WORLD_SIZE") or 1), rank + 1)
    except ValueError:
        return 0, 1


def run_metadata(command: list[str]) -> dict[str, Any]:
    return {**base_metadata(command, "torch"), "torch_version": torch.__version__, "cpu_stats_kernel": DEFAULT_KERNEL}


def start_probe(
    out: Path,
    command: list[str],
    *,
    every: int | Schedule = 1,
    masks: str | Mapping[str, torch.Tensor] = "auto",
    attrs: Mapping[str, Any] | None = None,
    all_ranks: bool = False,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Probe:
    """The one way a probe starts, for ``gfprobe.watch`` and ``gfprobe record`` alike: a recorder
    for ``out`` with the run's metadata, and the optimizer hooks. Which rank writes is decided at
    the first optimizer step (``Probe._claim_file``), when the process group is known."""
    metadata = dict(run_metadata(command), every=every if isinstance(every, int) else "custom",
                    masks=masks if isinstance(masks, str) else "explicit")
    recorder = Recorder(out, metadata, attrs or {})
    return Probe(recorder, every=every, masks=masks, model=model, optimizer=optimizer, all_ranks=all_ranks).start()


def watch(
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    out: str | Path = "run.h5",
    every: int | Schedule = 1,
    masks: str | Mapping[str, torch.Tensor] = "auto",
    attrs: Mapping[str, Any] | None = None,
    all_ranks: bool = False,
) -> Probe:
    """See :func:`gfprobe.watch`."""
    import sys

    try:
        check_writable(out, "gfprobe.watch(out=...)")
    except ConfigError as exc:  # training matters more than its recording: warn and train on
        log.warning("gfprobe: not recording: %s", exc)
        return Probe(Recorder(Path(out), {}, {}))  # never started: no hook, no file
    return start_probe(Path(out), list(sys.argv), every=every, masks=masks, attrs=attrs, all_ranks=all_ranks,
                       model=model, optimizer=optimizer)
