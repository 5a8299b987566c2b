"""A small training script with one way to break its gradients per option (no gfprobe code in it);
``tests/test_check.py`` records it and checks that exactly the matching rule fails.

--nan-at K        a NaN in one gradient entry at step K (the last step, so nothing else is hit)
--amp-skips       torch.amp.GradScaler, with an infinite loss at every other step
--loss-scale X    the loss times X (1e-12: vanishing gradients; 1e6 with --lr 0: exploding)
--collapse        the loss times 1e-4 from 80% of training on: egf_2 collapses
--spike-at K      the loss times 1000 at step K: an egf_2 jump
--detached        an extra layer the loss does not use: a dead layer
--imbalance       the first layer's gradient scaled by 1e-6 by a tensor hook
--zero-half       half of the second layer's weights zero at the start, never masked again
--mask-grads      with --zero-half: the gradient of those weights masked before each step
--unstable        in the second half, every fifth step's loss times 20
"""

import argparse

import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--nan-at", type=int, default=-1)
    p.add_argument("--amp-skips", action="store_true")
    p.add_argument("--loss-scale", type=float, default=1.0)
    p.add_argument("--collapse", action="store_true")
    p.add_argument("--spike-at", type=int, default=-1)
    p.add_argument("--detached", action="store_true")
    p.add_argument("--imbalance", action="store_true")
    p.add_argument("--zero-half", action="store_true")
    p.add_argument("--mask-grads", action="store_true")
    p.add_argument("--unstable", action="store_true")
    args = p.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    params = list(model.parameters())
    spare = nn.Linear(16, 8)
    if args.detached:
        params += list(spare.parameters())
    if args.imbalance:
        model[0].weight.register_hook(lambda g: g * 1e-6)
    mask = None
    if args.zero_half:
        mask = torch.ones_like(model[2].weight)
        mask[:, ::2] = 0
        with torch.no_grad():
            model[2].weight.mul_(mask)
    opt = torch.optim.SGD(params, lr=args.lr)
    scaler = torch.amp.GradScaler("cpu") if args.amp_skips else None
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    for step in range(args.steps):
        index = torch.arange(step * 32, step * 32 + 32) % 256
        loss = nn.functional.cross_entropy(model(x[index]), y[index]) * args.loss_scale
        if args.collapse and step >= 0.8 * args.steps:
            loss = loss * 1e-4
        if step == args.spike_at:
            loss = loss * 1000
        if args.unstable and step >= args.steps // 2 and step % 5 == 0:
            loss = loss * 20
        if scaler is not None and step % 2 == 1:
            loss = loss * float("inf")
        opt.zero_grad()
        (scaler.scale(loss) if scaler else loss).backward()
        if step == args.nan_at:
            model[0].weight.grad[0, 0] = float("nan")
        if mask is not None and args.mask_grads:
            model[2].weight.grad.mul_(mask)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    print(f"done steps={args.steps}", flush=True)


if __name__ == "__main__":
    main()
