"""A training script that reports its own metrics with ``gfprobe.log`` after training."""

import argparse

import torch
from torch import nn

import gfprobe


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    for _ in range(args.steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    gfprobe.log(test_acc=acc)  # a 0-d tensor: gfprobe.log takes .item()
    gfprobe.log(step=1, probe_value=0.25)
    gfprobe.log(test_acc=0.5)
    print(f"test_acc={acc.item():.8f}", flush=True)


if __name__ == "__main__":
    main()
