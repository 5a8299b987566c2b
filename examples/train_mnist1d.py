"""A plain PyTorch training script: an MLP on MNIST-1D (generated locally, no download).

It knows nothing about gfprobe beyond ``gfprobe.log`` (a no-op when nothing records). Record it
with no change to it:

    gfprobe record --out run.h5 -- python examples/train_mnist1d.py --epochs 8 --density 0.3
    gfprobe report run.h5

``--density`` below 1 prunes each weight matrix with a fixed random mask
(torch.nn.utils.prune), making a sparse network.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.utils.prune as prune
from torch import nn

import gfprobe


def load_mnist1d(seed: int) -> tuple[torch.Tensor, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    f32, i64 = torch.float32, torch.long
    return (torch.tensor(data["x"], dtype=f32), torch.tensor(data["y"], dtype=i64),
            torch.tensor(data["x_test"], dtype=f32), torch.tensor(data["y_test"], dtype=i64))


def build_mlp(inputs: int, hidden: int, layers: int, classes: int, density: float) -> nn.Sequential:
    blocks: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    model = nn.Sequential(*blocks, nn.Linear(width, classes))
    if density < 1.0:
        for module in model:
            if isinstance(module, nn.Linear):
                prune.random_unstructured(module, "weight", amount=1.0 - density)  # type: ignore[no-untyped-call]
    return model


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    model.train()
    return acc, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--density", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x, y, x_test, y_test = load_mnist1d(seed=42)
    model = build_mlp(x.shape[1], args.hidden, args.layers, 10, args.density)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=args.batch_size, shuffle=True)
    for epoch in range(1, args.epochs + 1):
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        acc, loss = evaluate(model, x_test, y_test)
        gfprobe.log(test_acc=acc, test_loss=loss)
        print(f"epoch {epoch} test_acc={acc:.4f} test_loss={loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
