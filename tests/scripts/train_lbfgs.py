"""A plain LBFGS training loop that saves the gradient of the first closure call of every step.

No gfprobe code in it. LBFGS evaluates its closure several times per ``step()`` (``max_iter``);
the gradient of the first evaluation, at the weights the step starts from, is the one that sets
its first direction, and the one a recorder should report for the step. The script's own
closure snapshots Σg² (float64) of every parameter on that first call, counts the calls per
step, and ``--save`` writes both with the parameter names and the final weights.

Printed to stdout: a SHA-256 of the final weights, so that comparing stdout with and without a
recorder compares the trained weights bit for bit.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from witness import weights_digest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8, help="optimizer steps (step() calls)")
    p.add_argument("--max-iter", type=int, default=4, help="LBFGS iterations per step")
    p.add_argument("--save", default="")
    args = p.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    names = [name for name, _ in model.named_parameters()]
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=args.max_iter, history_size=5)
    gen = torch.Generator().manual_seed(1)
    snapshots: list[list[float]] = []
    calls: list[int] = []
    for _ in range(args.steps):
        x = torch.randn(32, 16, generator=gen)
        y = torch.randn(32, 4, generator=gen)
        calls.append(0)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if calls[-1] == 0:  # the first evaluation of this step() call
                snapshots.append([float(q.grad.double().square().sum()) for q in model.parameters()])
            calls[-1] += 1
            return loss

        opt.step(closure)
    print(f"steps {len(calls)} closure calls {calls} weights {weights_digest(model)}", flush=True)
    if args.save:
        torch.save({"names": names, "sumsq": torch.tensor(snapshots, dtype=torch.float64), "calls": calls,
                    "weights": {n: q.detach().clone() for n, q in model.named_parameters()}}, args.save)


if __name__ == "__main__":
    main()
