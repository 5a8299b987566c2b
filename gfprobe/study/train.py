"""Training one run of a study under gfprobe: build the data, the network and the optimizer,
train, evaluate, and record everything into the run's file.

The loop is deliberately plain PyTorch; gfprobe only watches it (``gfprobe.watch``) and receives
the evaluations (``gfprobe.log``), as it would in any user's script.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import gfprobe
from gfprobe.study import capacity, data, models
from gfprobe.study.config import RunSpec
from gfprobe.study.names import DATASETS
from gfprobe.study.probe import ProbePass
from gfprobe.study.runattrs import run_attrs

__all__ = ["RunResult", "Trained", "evaluate", "make_optimizer", "run_attrs", "train_model", "train_run"]

EVAL_BATCH = 1000
MOMENTUM = 0.9


@dataclass(frozen=True)
class RunResult:
    run_id: str
    path: Path
    test_acc: float
    test_loss: float
    seconds: float


def make_optimizer(spec: RunSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of the grid; weight decay only when the regularisation includes L2
    (coupled L2 for every optimizer but AdamW, whose decay is decoupled: SCIENCE.md §4)."""
    decay = spec.weight_decay if "L2" in spec.regularisers else 0.0
    params = list(params)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, weight_decay=decay)
    if spec.optimizer == "momentum":
        return torch.optim.SGD(params, lr=spec.lr, momentum=MOMENTUM, weight_decay=decay)
    if spec.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=spec.lr, weight_decay=decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=decay)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, weight_decay=decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=decay)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy, in batches, in eval mode (BatchNorm statistics)."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH])
        target = y[start:start + EVAL_BATCH]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    model.train()
    return correct / len(x), loss / len(x)


def train_run(spec: RunSpec, out: Path, data_root: Path | None = None, download: bool = False,
              threads: int | None = None, device: str = "cpu") -> RunResult:
    """Train ``spec`` on ``device`` and record it into ``out`` (which must not exist)."""
    started = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    trained = train_model(spec, out, data_root, download, device)
    return RunResult(spec.run_id, out, trained.test_acc, trained.test_loss, time.monotonic() - started)


@dataclass(frozen=True)
class Trained:
    model: nn.Module
    test_acc: float
    test_loss: float


def train_model(spec: RunSpec, out: Path, data_root: Path | None = None, download: bool = False,
                device: str = "cpu") -> Trained:
    """:func:`train_run`'s training, returning the trained network too."""
    info = DATASETS[spec.dataset]
    split, held_out = data.hold_out(data.load(spec.dataset, data_root, download, spec.samples, spec.test_fraction),
                                    spec.probe_batch)
    split = data.Split(*(t.to(device) for t in (split.x_train, split.y_train, split.x_test, split.y_test)))
    plan = capacity.plan_pair(spec.arch, info, spec.sparse_width, spec.density, spec.hidden_layers)
    generator = torch.Generator().manual_seed(spec.seed)
    options = models.ModelOptions(activation=spec.activation, batch_norm="BN" in spec.regularisers,
                                  skip="SC" in spec.regularisers, init=spec.init)
    built = models.build(plan, spec.sparse, info, options, generator)
    built.model.to(device)
    built.masks = {name: mask.to(device) for name, mask in built.masks.items()}
    optimizer = make_optimizer(spec, built.model.parameters())
    if built.masks:
        models.keep_masked_weights_zero(built.model, built.masks, optimizer)
    acc, loss = math.nan, math.nan
    with gfprobe.watch(built.model, optimizer, out=out, every=spec.record_every, masks=built.masks,
                       attrs=run_attrs(spec, plan)) as recording:
        measure = _no_probe
        if spec.probe_every and held_out is not None:
            batch = data.ProbeBatch(held_out.x.to(device), held_out.y.to(device))
            measure = ProbePass(recording, built.model, batch, spec.probe_every)
        for epoch in range(1, spec.epochs + 1):
            train_loss = _train_epoch(spec, built.model, optimizer, split, generator, measure)
            if epoch % spec.eval_every == 0 or epoch == spec.epochs:
                acc, loss = evaluate(built.model, split.x_test, split.y_test)
                gfprobe.log(test_acc=acc, test_loss=loss, train_loss=train_loss)
    return Trained(built.model, acc, loss)


def _no_probe() -> None:
    """The probe pass of a run without one."""


def _train_epoch(spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer, split: data.Split,
                 generator: torch.Generator, measure: Callable[[], None] = _no_probe) -> float:
    """One pass over the training set in a seeded random order; returns the mean batch loss.
    ``measure`` runs before each step is computed (the probe pass: it changes nothing here)."""
    augment = "DA" in spec.regularisers
    order = torch.randperm(len(split.x_train), generator=generator).to(split.x_train.device)
    total = torch.zeros((), device=split.x_train.device)  # summed on the device: one sync per epoch
    batches = 0
    for start in range(0, len(order), spec.batch_size):
        measure()
        index = order[start:start + spec.batch_size]
        x = split.x_train[index]
        if augment:
            x = data.augment(spec.dataset, x, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), split.y_train[index])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.detach()
        batches += 1
    return float(total) / max(batches, 1)
