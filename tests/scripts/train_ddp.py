"""A DDP training script for ``torchrun --nproc_per_node=2`` on CPU (gloo); no gfprobe code in it.

Each rank trains on its own data. On the last step, rank 0 saves the gradients the optimizer
consumed (DDP's all-reduced average) and, as an independent check, the average of every rank's
local gradient computed without DDP on a plain copy of the model.
"""

import argparse
import copy
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--save", required=True)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    for step in range(args.steps):
        x = torch.randn(16, 16, generator=gen)
        y = torch.randint(0, 4, (16,), generator=gen)
        last = step == args.steps - 1
        if last:
            plain = copy.deepcopy(model)
            nn.functional.cross_entropy(plain(x), y).backward()
            local = {n: q.grad.detach().clone() for n, q in plain.named_parameters()}
            for g in local.values():
                dist.all_reduce(g)
                g /= world
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if last and rank == 0:
            torch.save({"ddp": {n: q.grad.detach().clone() for n, q in model.named_parameters()},
                        "manual": local, "world": world, "pid": os.getpid()}, args.save)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
