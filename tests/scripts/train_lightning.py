"""A tiny Lightning training script that saves the gradient its optimizer consumed at every step.

No gfprobe code in it. The consumed gradient is captured independently of gfprobe by the
optimizer itself: ``configure_optimizers`` returns ``SnapshotSGD``, plain SGD written here,
whose ``step(closure)`` runs the closure (Lightning's forward, backward, accumulation and
clipping happen in it), then stores Σg² of every parameter, then updates. What it stores is by
definition the gradient that moved the weights.

One process can train several configurations one after another (separated by ``+``), each with
a fresh model and optimizer, because importing Lightning takes most of a run on a small CPU::

    train_lightning.py --save out.pt --accumulate 2 --clip 1.0 + --manual --clip 1.0

Printed to stdout per configuration: the configuration and a SHA-256 of the final weights, so
that comparing stdout with and without a recorder compares the trained weights bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from witness import weights_digest

BATCH = 8


class SnapshotSGD(torch.optim.Optimizer):
    """Plain SGD that records Σg² (float64) of each parameter as it consumes the gradient."""

    def __init__(self, named: Iterable[tuple[str, nn.Parameter]], lr: float) -> None:
        pairs = list(named)
        self.names = [name for name, _ in pairs]
        self.snapshots: list[list[float]] = []
        self.grad_dtypes: set[str] = set()
        super().__init__([p for _, p in pairs], {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        self.grad_dtypes.update(str(p.grad.dtype) for p in params if p.grad is not None)
        self.snapshots.append([0.0 if p.grad is None else float(p.grad.double().square().sum()) for p in params])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


class Net(pl.LightningModule):
    """MLP 16→32→4 with a summed squared error, large enough that gradient norms exceed 1."""

    def __init__(self, manual: bool, accumulate: int, clip: float | None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.automatic_optimization = not manual
        self.accumulate = accumulate
        self.clip = clip
        self.snapshot_opt: SnapshotSGD | None = None

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x).float(), y, reduction="sum") / BATCH

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self.loss(batch)
        return self.manual_step(batch, batch_idx)

    def manual_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        """Manual optimization: backward every batch, clip and step every ``accumulate`` batches."""
        opt = self.optimizers()
        self.manual_backward(self.loss(batch) / self.accumulate)
        if (batch_idx + 1) % self.accumulate == 0:
            if self.clip is not None:
                self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self) -> SnapshotSGD:
        self.snapshot_opt = SnapshotSGD(self.named_parameters(), lr=0.02)
        return self.snapshot_opt


def data(steps: int, accumulate: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    n = steps * accumulate * BATCH
    x = torch.randn(n, 16, generator=gen)
    y = 3 * torch.randn(n, 4, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)



def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10, help="optimizer steps")
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--clip", type=float, default=None, help="gradient_clip_val (norm)")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--manual", action="store_true", help="manual optimization")
    p.add_argument("--save", default="", help="where to torch.save every group's snapshots (any one group)")
    return p


def train(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model = Net(args.manual, args.accumulate, args.clip)
    trainer = pl.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, precision=args.precision,
        accumulate_grad_batches=1 if args.manual else args.accumulate,
        gradient_clip_val=None if args.manual else args.clip,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, data(args.steps, args.accumulate))
    assert model.snapshot_opt is not None
    config = {k: getattr(args, k) for k in ("steps", "accumulate", "clip", "precision", "manual")}
    print(f"config {config} steps {trainer.global_step} weights {weights_digest(model)}", flush=True)
    return {"config": config, "names": model.snapshot_opt.names,
            "sumsq": torch.tensor(model.snapshot_opt.snapshots, dtype=torch.float64),
            "grad_dtypes": sorted(model.snapshot_opt.grad_dtypes),
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def groups(argv: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for arg in argv:
        if arg == "+":
            out.append([])
        else:
            out[-1].append(arg)
    return out


def main() -> None:
    runs = [parser().parse_args(group) for group in groups(sys.argv[1:])]
    results = [train(args) for args in runs]
    save = next((args.save for args in runs if args.save), "")
    if save:
        torch.save(results, save)


if __name__ == "__main__":
    main()
