"""Measurement streams: statistics of gradients that no optimizer consumes.

An optimizer's stream records the gradient each of its steps consumes (``torch_probe``). A
protocol may measure another gradient at the same weights: the gradient of a fixed probe batch
(Evci et al. 2020), every K optimizer steps, taken for measurement only. A measurement stream
records such gradients as a stream of its own in the run file, with its own attributes (its
protocol), so that both can be reported side by side.

The script computes the gradients, preferably with ``torch.autograd.grad`` (:meth:`measure`),
which leaves ``.grad``, the optimizer's input, alone; the stream takes their statistics with the
kernels and the batching the optimizer streams use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from gfprobe.adapters.torch_params import TrackedParam
from gfprobe.adapters.torch_stats import make_stats
from gfprobe.capture.metadata import BATCH_STEPS, FLUSH_SECONDS
from gfprobe.errors import ConfigError
from gfprobe.schedule import Schedule

if TYPE_CHECKING:
    from gfprobe.adapters.torch_probe import Probe


class MeasurementStream:
    """A stream of gradient statistics that no optimizer consumes. Make one with
    :meth:`Probe.measurement_stream <gfprobe.adapters.torch_probe.Probe.measurement_stream>`.

    Its rows wait for the run's first optimizer step before they reach the file, so that the
    optimizer's stream keeps index 0 (the one reports show by default) even when the first
    measurement comes before it; a run that never steps an optimizer writes them when it closes.
    """

    def __init__(self, probe: Probe, name: str, tracked: list[TrackedParam], attrs: Mapping[str, Any],
                 schedule: Schedule) -> None:
        from gfprobe.adapters.torch_probe import _Stream  # torch_probe imports this module

        self.name = name
        self.attrs = dict(attrs)
        self._probe = probe
        self._params = [t.param for t in tracked]
        self._schedule = schedule
        self._stream = _Stream(-1, tracked, make_stats(tracked))  # -1: not in the file yet

    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters measured, in the order :meth:`record` takes their gradients."""
        return list(self._params)

    @property
    def index(self) -> int | None:
        """The stream's index in the run file, once it has one."""
        return self._stream.index if self._stream.index >= 0 else None

    def due(self, step: int | None = None) -> bool:
        """Whether the stream's schedule measures at ``step`` (default: the optimizer steps taken
        so far). False when nothing records, so a script can skip the work of measuring."""
        return self._probe.recording and self._schedule(self._step(step))

    def measure(self, loss: torch.Tensor, step: int | None = None) -> None:
        """Record the gradient of ``loss`` with respect to :attr:`params`, taken with
        ``torch.autograd.grad``: no parameter's ``.grad`` is read or written. A parameter the
        loss does not depend on is recorded as having no gradient."""
        grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        self.record(grads, step)

    def record(self, grads: Sequence[torch.Tensor | None], step: int | None = None) -> None:
        """Record one row: ``grads`` in :attr:`params` order (None: no gradient), measured at
        optimizer step ``step`` (default: the steps taken so far, so a measurement before step s
        shares its weights and its step index with the optimizer's record of step s).

        Raises:
            ConfigError: ``grads`` does not have one entry per parameter, or ``step`` is negative.
        """
        grads = list(grads)
        if len(grads) != len(self._params):
            raise ConfigError(f"measurement stream {self.name!r} measures {len(self._params)} parameters, "
                              f"got {len(grads)} gradients; pass one per parameter, in .params order")
        if step is not None and (not isinstance(step, int) or step < 0):
            raise ConfigError(f"measurement stream {self.name!r}: step must be a non-negative int, got {step!r}")
        probe = self._probe
        if not probe.recording:
            return
        started = time.perf_counter()
        try:
            stream = self._stream
            stream.rows.append(stream.kernel.row(grads))
            stream.steps.append(self._step(step))
            stream.times.append(probe._recorder.elapsed())
            stream.skipped.append(0)
            started = stream.stamp(started)
            if len(stream.rows) >= BATCH_STEPS or time.monotonic() - stream.last_flush >= FLUSH_SECONDS:
                self.flush()
            stream.unstamped += time.perf_counter() - started
        except Exception as exc:  # never into the user's loop: recording stops, training goes on
            probe.fail(exc)

    def flush(self, closing: bool = False) -> None:
        """Hand the rows kept so far to the recorder; the first time, add the stream to the file."""
        stream = self._stream
        if not stream.rows:
            return
        if stream.index < 0:
            if not self._probe._may_add_measurements(closing):
                return
            infos = [t.info for t in stream.tracked]
            stream.index = self._probe._recorder.add_stream(self.name, infos, self.attrs)
        self._probe._flush(stream)

    def _step(self, step: int | None) -> int:
        return self._probe._recorder.current_step if step is None else step
