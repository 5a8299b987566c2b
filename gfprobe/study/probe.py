"""The probe-batch protocol (Evci et al. 2020; SCIENCE.md §2 "When it is measured"): the gradient
of the plain training loss on a fixed batch of held-out training examples, every K optimizer
steps, recorded as a stream of its own beside the minibatch gradient the optimizer consumes.

The pass must leave the training it observes exactly as it would be without it:

* the gradient comes from ``torch.autograd.grad``, so no ``.grad`` (the optimizer's input) is
  read or written, and the optimizer is never called (its state is untouched);
* it draws no random numbers (no augmentation), so the run's generator is not advanced;
* BatchNorm runs in training mode, normalising with the probe batch's own statistics: that is
  the function the optimizer is training, and the minibatch stream measures it the same way, so
  the two streams differ in their data alone. (Evaluation mode would use the running averages,
  which lag the weights and describe another function early in training.) Training mode updates
  the running statistics, so every buffer is put back, bit for bit, after the pass.

The loss is the cross-entropy alone: no weight decay term (torch adds decay inside the
optimizer's step, which the pass never calls) and no augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gfprobe.adapters.torch_measure import MeasurementStream
from gfprobe.adapters.torch_probe import Probe
from gfprobe.store.schema import PROBE_BATCH, PROTOCOL
from gfprobe.study.data import ProbeBatch

STREAM = "probe"  # the stream's name: ``gfprobe report --stream probe``


def protocol_attrs(batch_size: int, every: int) -> dict[str, Any]:
    """The probe stream's attributes: what a report says about where its gradient comes from."""
    return {PROTOCOL: PROBE_BATCH, "batch_size": batch_size, "every": every, "held_out": True, "mode": "train"}


class ProbePass:
    """Measures the probe batch's gradient into a measurement stream of ``probe`` when it is due."""

    def __init__(self, probe: Probe, model: nn.Module, batch: ProbeBatch, every: int) -> None:
        self._model = model
        self._batch = batch
        self._stream: MeasurementStream = probe.measurement_stream(
            STREAM, model.parameters(), protocol_attrs(len(batch.y), every), every=every)

    def __call__(self) -> None:
        """Measure now if the schedule says so; called before each optimizer step is computed, so
        the probe gradient of step s is taken at the weights step s updates."""
        if not self._stream.due():
            return
        with buffers_kept(self._model):
            loss = F.cross_entropy(self._model(self._batch.x), self._batch.y)
            self._stream.measure(loss)


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Put every buffer of ``model`` (BatchNorm's running mean, variance and batch count) back as
    it was, whatever the block did to it."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
