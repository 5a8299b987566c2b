"""An ordinary training script that saves what the tests compare against (no gfprobe code in it).

On its last optimizer step it saves the gradients the optimizer consumed (``--save-grads``),
and at the end the final weights (``--save-weights``), both keyed by parameter name.
"""

import argparse

import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--save-grads", default="")
    p.add_argument("--save-weights", default="")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(args.seed + 1)
    for step in range(args.steps):
        for _ in range(args.accumulate):
            x = torch.randn(16, 16, generator=gen)
            y = torch.randint(0, 4, (16,), generator=gen)
            loss = nn.functional.cross_entropy(model(x), y) / args.accumulate
            loss.backward()
        opt.step()
        if step == args.steps - 1 and args.save_grads:
            torch.save({n: p.grad.detach().clone() for n, p in model.named_parameters()}, args.save_grads)
        opt.zero_grad()
    if args.save_weights:
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, args.save_weights)
    print(f"done steps={args.steps} micro_batches={args.steps * args.accumulate}", flush=True)


if __name__ == "__main__":
    main()
