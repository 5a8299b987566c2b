"""What the training scripts witness independently of gfprobe: the gradient each optimizer step
consumed, and the final weights.

The scripts run as ``python tests/scripts/<script>.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's name and bytes, in order: equal only for identical weights."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class SnapshotOptimizer(torch.optim.Optimizer):
    """An optimizer written out in the script, whose ``step`` records the Σg² (float64) of every
    parameter's gradient as it reads it, before updating: by definition what the step consumed.
    Subclasses implement :meth:`update`."""

    def __init__(self, named: Iterable[tuple[str, nn.Parameter]], defaults: dict[str, Any]) -> None:
        named = list(named)
        self.names = [n for n, _ in named]
        self.snapshots: list[list[float]] = []  # [step][param]; NaN where no gradient
        super().__init__([p for _, p in named], defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        self.snapshots.append([math.nan if p.grad is None else float(p.grad.double().square().sum())
                               for p in params])
        self.update()
        return loss

    def update(self) -> None:
        raise NotImplementedError
