"""Data-parallel training four ways on one global batch, for checking recorded statistics against
the full gradients; no gfprobe code in it.

``--mode fsdp2`` (``fully_shard``), ``--mode fsdp1`` (``FullyShardedDataParallel`` with
``use_orig_params=True``) and ``--mode ddp``, each under ``torchrun`` with gloo on CPU, and
``--mode single`` (one process) train the same model on the same global batches: each rank takes
its slice, and FSDP and DDP average the ranks' gradients, so every mode consumes the same
gradient. Rank 0 saves, per step, each parameter's Σg², Σ|g| and max|g| of the full gradient as
the script sees it (``p.grad.full_tensor()`` under FSDP2, ``summon_full_params(with_grads=True)``
under FSDP1).
"""

import argparse
import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

WIDTH_IN, HIDDEN, CLASSES, BATCH = 12, 33, 5, 24  # 33 rows: an uneven shard over 2 ranks


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH_IN, HIDDEN), nn.LayerNorm(HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def full(grad: torch.Tensor) -> torch.Tensor:
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad


def statistics(model: nn.Module) -> dict[str, tuple[float, float, float]]:
    if hasattr(model, "summon_full_params"):  # FSDP1: gather the full gradients to compare
        with model.summon_full_params(model, with_grads=True):
            return statistics(model.module)
    out = {}
    for name, p in model.named_parameters():
        g = full(p.grad).detach().double()
        out[name] = ((g * g).sum().item(), g.abs().sum().item(), g.abs().max().item())
    return out


def checksum(model: nn.Module) -> str:
    """A digest of the full final weights (a collective under FSDP: every rank calls it)."""
    if hasattr(model, "summon_full_params"):
        with model.summon_full_params(model):
            return checksum(model.module)
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(full(p.detach()).clone().numpy().tobytes())  # a copy: FSDP1 frees the gathered storage
    return digest.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["fsdp2", "fsdp1", "ddp", "single"], required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save", required=True)
    p.add_argument("--die-at", type=int, default=-1, help="rank 1 kills itself at this step")
    args = p.parse_args()

    distributed = args.mode != "single"
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    model = build()
    if args.mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        net: nn.Module = model
    elif args.mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        net = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
        model = net  # its parameters are the original ones, sharded in place
    elif args.mode == "ddp":
        net = nn.parallel.DistributedDataParallel(model)
    else:
        net = model
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(7)
    seen = []
    for step in range(args.steps):
        x = torch.randn(BATCH, WIDTH_IN, generator=gen)
        y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        if step == args.die_at and rank == 1:
            os.kill(os.getpid(), 9)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[mine]), y[mine]).backward()
        seen.append(statistics(model))
        opt.step()
    weights = checksum(model)
    if rank == 0:
        torch.save({"steps": seen, "world": world}, args.save)
        print(f"weights {weights}", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
