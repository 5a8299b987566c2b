"""Which device each run of a study trains on, so that parallel runs never fight over one GPU.

With ``--device cuda`` and several runs at once, every worker process is pinned to one GPU before
it imports torch (``CUDA_VISIBLE_DEVICES`` narrowed to that GPU, so ``cuda`` means its own device),
and ``--gpus-per-run F`` (a fraction such as 0.5 or 0.25) lets ⌊1/F⌋ runs share a GPU, each
capped at F of its memory. Ray does the same for its tasks from their ``num_gpus``.

Planning here is plain arithmetic on the device list; only :func:`check_device` and
:func:`visible_gpus` import torch, and only where training is about to happen.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from gfprobe.errors import ConfigError

VISIBLE = "CUDA_VISIBLE_DEVICES"


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def check_device(device: str) -> None:
    """Refuse a device torch does not know, or CUDA where there is none."""
    import torch  # here, not at the top: only training needs torch, never planning or reporting

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch build or machine has no CUDA device; use --device cpu")


def check_gpus_per_run(gpus_per_run: float | None, device: str) -> float:
    """The share of a GPU each run gets: 1 by default on CUDA, refused on the CPU. A run trains on
    one device, so more than one GPU per run would only leave GPUs idle."""
    if gpus_per_run is None:
        return 1.0 if is_cuda(device) else 0.0
    if not is_cuda(device):
        raise ConfigError(f"--gpus-per-run {gpus_per_run:g} needs --device cuda; runs on {device} use no GPU")
    if not 0 < gpus_per_run <= 1:
        raise ConfigError(f"--gpus-per-run {gpus_per_run:g} must be in (0, 1]: a run trains on one GPU, and "
                          "0.5 lets two runs share one")
    return gpus_per_run


def runs_per_gpu(gpus_per_run: float) -> int:
    """How many runs share one GPU: ⌊1/F⌋, so that their shares never add up to more than it has
    (0.3 gives 3, not 3.33). The small tolerance keeps 1/0.2 = 4.999… at 5."""
    return max(1, math.floor(1 / gpus_per_run + 1e-9))


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs), in
    order: the user's own ``CUDA_VISIBLE_DEVICES`` is respected, never widened."""
    listed = os.environ.get(VISIBLE)
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class GpuSlots:
    """The GPU of each of ``jobs`` worker processes: worker k uses ``gpus[k]`` (one entry of
    ``CUDA_VISIBLE_DEVICES``), and ``fraction`` of its memory."""

    gpus: tuple[str, ...]
    fraction: float


def plan_gpu_slots(device: str, jobs: int, gpus_per_run: float, gpus: list[str]) -> GpuSlots:
    """Pin each of ``jobs`` workers to a GPU, ⌊1/F⌋ workers per GPU, or refuse when they would not
    fit: two processes on a GPU nobody assigned them slow each other down or run out of memory."""
    if device != "cuda":  # cuda:N names one GPU: the workers share it
        index = int(device.partition(":")[2])
        if index >= len(gpus):
            raise ConfigError(f"--device {device}: this machine shows {len(gpus)} GPUs (cuda:0 to "
                              f"cuda:{len(gpus) - 1}); pick one of them, or --device cuda to use all")
        gpus = [gpus[index]]
    if not gpus:
        raise ConfigError(f"--device {device}: no GPU is visible ({VISIBLE} is empty); use --device cpu")
    fits = len(gpus) * runs_per_gpu(gpus_per_run)
    if jobs > fits:
        raise ConfigError(
            f"--jobs {jobs} with --device {device}: {len(gpus)} GPU(s) at --gpus-per-run {gpus_per_run:g} "
            f"take {fits} run(s) at once; use --jobs {fits}, or a smaller --gpus-per-run "
            f"(e.g. {1 / math.ceil(jobs / len(gpus)):g}) to share each GPU between more runs")
    # Worker k on GPU k mod n: the workers spread over the GPUs, at most ⌊1/F⌋ on each.
    return GpuSlots(tuple(gpus[k % len(gpus)] for k in range(jobs)), gpus_per_run)


def limit_gpu_memory(device: str, fraction: float) -> None:
    """Cap this process's share of its GPU's memory when runs share it: one run's growth then
    fails that run alone (out of memory) instead of every run on the GPU."""
    if not is_cuda(device) or fraction >= 1:
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))
