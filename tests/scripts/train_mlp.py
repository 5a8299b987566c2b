"""A small, ordinary training script used by the end-to-end tests (no gfprobe code in it).

Options cover the cases the tests need: gradient accumulation, AMP GradScaler, DataLoader
workers, torch.compile, pruning, a long run to be killed, and failure modes.
"""

import argparse
import time

import torch
import torch.nn.utils.prune as prune
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="use torch.amp.GradScaler")
    p.add_argument("--nonfinite-at", type=int, default=-1, help="make the loss infinite at this step")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--prune", type=float, default=0.0)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (for kill tests)")
    p.add_argument("--crash-at", type=int, default=-1)
    p.add_argument("--no-optimizer", action="store_true")
    p.add_argument("--print-metric", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    if args.prune:
        prune.random_unstructured(model[2], "weight", amount=args.prune)
    if args.no_optimizer:
        print(model(torch.randn(2, 16)).sum().item())
        return
    x = torch.randn(256, 16)
    y = torch.randint(0, 4, (256,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16,
                                         shuffle=False, num_workers=args.workers)
    net = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu") if args.amp else None
    step = 0
    micro = 0
    while step < args.steps:
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(net(xb), yb) / args.accumulate
            if step == args.nonfinite_at:
                loss = loss * float("inf")
            (scaler.scale(loss) if scaler else loss).backward()
            micro += 1
            if micro % args.accumulate:
                continue
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()
            step += 1
            if args.print_metric:
                print(f"step {step} train_loss={loss.item() * args.accumulate:.5f}", flush=True)
            if step == args.crash_at:
                raise RuntimeError("crash requested by --crash-at")
            if args.sleep:
                time.sleep(args.sleep)
            if step >= args.steps:
                break
    print(f"done steps={step}", flush=True)


if __name__ == "__main__":
    main()
