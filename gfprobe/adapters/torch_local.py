"""What of a gradient this process may read, and in a form the statistics kernels read safely.

Sharded training (FSDP2's ``fully_shard``, tensor parallelism: any ``DTensor``) leaves each rank
with a shard of every gradient. gfprobe never gathers them: each rank computes its statistics
over the elements it holds, and merging the ranks' files adds the sums and counts and maxes the
maxima (``store/merge.py``), which gives exactly the statistics of the full gradient. A
replicated placement is counted by coordinate 0 of its mesh dimension only, so replicas count
once, never × ranks. A ``Partial`` placement (a sum still pending over ranks) cannot be split
that way; such a gradient is reported as unreadable rather than recorded wrong.

The C kernel reads raw memory from ``data_ptr()``, so every gradient is normalised here to a
plain strided CPU or device tensor before any kernel sees it; anything that cannot be (meta
tensors, nested tensors, tensor subclasses other than DTensor) is skipped with one warning.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

log = logging.getLogger("gfprobe")

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_REAL_FLOATS = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})
_DENSE_ABLE_LAYOUTS = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


class Unreadable(Exception):
    """A gradient gfprobe cannot read safely; the message says why, for the one warning."""


@dataclass(frozen=True)
class Sharding:
    """How this rank holds a sharded parameter (a DTensor, or one FSDP1 shards in place)."""

    owner: bool  # this rank's local elements count (False for a replica other than coordinate 0)
    local_numel: int


@dataclass(frozen=True)
class Fsdp1Shard:
    """A parameter FSDP1 shards in place: its full shape, and whether this rank's piece counts."""

    shape: tuple[int, ...]
    owner: bool
    padding: int = 0  # trailing zeros FSDP1 pads a flat parameter's shard with


def fsdp1_shards(roots: Iterable[torch.nn.Module]) -> dict[int, Fsdp1Shard]:
    """FSDP1 (``FullyShardedDataParallel``) parameters under ``roots`` that ranks hold sharded.

    With ``use_orig_params=True`` the optimizer steps the original parameters, each now a 1-D
    view of this rank's piece (empty when the piece is elsewhere); otherwise it steps one flat
    parameter per FSDP unit. Either way the pieces of all ranks make the whole exactly once (once
    per replica group under HYBRID_SHARD, whose replicas other than the first do not count).
    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return {}
    found: dict[int, Fsdp1Shard] = {}
    for root in roots:
        for module in root.modules():
            handle = getattr(module, "_handle", None) if isinstance(module, FullyShardedDataParallel) else None
            if handle is None or not handle.uses_sharded_strategy:
                continue
            replicas = getattr(module, "_inter_node_pg", None)
            owner = replicas is None or torch.distributed.get_rank(group=replicas) == 0
            flat = handle.flat_param
            found[id(flat)] = Fsdp1Shard(tuple(flat._unpadded_unsharded_size), owner, flat._shard_numel_padded)
            for param, shape in zip(flat._params or (), flat._shapes, strict=False):
                found[id(param)] = Fsdp1Shard(tuple(shape), owner)
    return found


def is_dtensor(tensor: object) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def sharding_of(param: torch.Tensor, fsdp1: Fsdp1Shard | None = None) -> Sharding | None:
    """None for a parameter every rank holds whole (plain tensors, DDP)."""
    if fsdp1 is not None:
        return Sharding(fsdp1.owner, param.numel() - fsdp1.padding)
    if not is_dtensor(param):
        return None
    local = param.to_local()  # type: ignore[attr-defined]
    return Sharding(_owns(param), local.numel())


def _owns(tensor: torch.Tensor) -> bool:
    coordinate = tensor.device_mesh.get_coordinate()  # type: ignore[attr-defined]
    if coordinate is None:
        return False  # this rank is not in the tensor's mesh
    return all(coordinate[dim] == 0 for dim, placement in enumerate(tensor.placements)  # type: ignore[attr-defined]
               if placement.is_replicate())


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The elements of ``tensor`` this rank contributes: the whole tensor, its local shard, or an
    empty tensor for a replica another rank counts."""
    if not is_dtensor(tensor):
        return tensor
    if any(placement.is_partial() for placement in tensor.placements):  # type: ignore[attr-defined]
        raise Unreadable("a DTensor with a Partial placement (its sum over ranks is still pending)")
    local: torch.Tensor = tensor.to_local().detach()  # type: ignore[attr-defined]
    return local if _owns(tensor) else local.new_empty(0)


class MaskVersion:
    """Which mask tensor, at which in-place version, a cached value was computed from.

    The tensor is held weakly and compared by identity: an ``id`` alone can be reused by the next
    mask once pruning again frees the old one, and a stale count would then go unnoticed.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self._ref = weakref.ref(mask)
        self._version = mask._version

    def matches(self, mask: torch.Tensor) -> bool:
        return self._ref() is mask and self._version == mask._version


def local_mask_getter(getter: Callable[[], torch.Tensor], param: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A mask getter that yields the part of a sharded parameter's mask this rank holds.

    The part is a new view at each call; the one made last is handed out again while the mask
    it came from is the same tensor, unchanged, so that the counts and prepared masks cached by
    mask identity (``MaskVersion``) stay cached (a view shares its base's version counter).
    """
    made: list[tuple[MaskVersion, torch.Tensor]] = []

    def local() -> torch.Tensor:
        mask = getter()
        if made and made[0][0].matches(mask):
            return made[0][1]
        part = local_tensor(mask) if is_dtensor(mask) else _slice_like(mask, param)
        made[:] = [(MaskVersion(mask), part)]
        return part

    return local


def _slice_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The block of a full-size mask that matches ``param``'s local shard."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = param.placements  # type: ignore[attr-defined]
    if any(not (p.is_shard() or p.is_replicate()) or type(p).__name__.startswith("_") for p in placements):
        raise Unreadable(f"a full-size mask for a parameter with placements {placements}")
    if not _owns(param):
        return full.reshape(-1)[:0]
    shape, offset = compute_local_shape_and_global_offset(full.shape, param.device_mesh, placements)  # type: ignore[attr-defined]
    index = tuple(slice(start, start + size) for start, size in zip(offset, shape, strict=True))
    return full[index]


def readable(grad: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``grad`` (its local part under sharding) as a plain strided tensor on ``device``, or
    :class:`Unreadable`. Never copies an ordinary dense gradient."""
    if (type(grad) is torch.Tensor and grad.layout == torch.strided and grad.dtype in _REAL_FLOATS
            and grad.device.type == device.type and not grad.is_nested):
        return grad  # the hot path: every check below would pass
    grad = local_tensor(grad)
    if type(grad) not in _PLAIN_TYPES:
        if _dispatches_itself(grad):  # a wrapper: its data_ptr() is not its data
            raise Unreadable(f"a tensor subclass ({type(grad).__name__}) whose memory gfprobe cannot read")
        grad = grad.as_subclass(torch.Tensor)  # a Python subclass over ordinary storage
    if grad.is_meta:
        raise Unreadable("a meta tensor (it has no data)")
    if grad.is_nested:
        raise Unreadable("a nested tensor")
    if grad.device.type != device.type:
        raise Unreadable(f"on {grad.device}, while the optimizer's other gradients are on {device}")
    if grad.is_quantized:
        grad = grad.dequantize()
    if grad.layout in _DENSE_ABLE_LAYOUTS:
        grad = grad.to_dense()
    elif grad.layout not in (torch.strided, torch.sparse_coo):
        raise Unreadable(f"a tensor with layout {grad.layout}")
    if grad.is_complex():
        grad = grad.abs()  # |g| gives Σ|g|², Σ|g| and max|g| of the complex values
    return grad


def _dispatches_itself(tensor: torch.Tensor) -> bool:
    """True for wrapper subclasses (``__torch_dispatch__``), whose storage, if any, is not their data."""
    return getattr(type(tensor), "__torch_dispatch__", None) is not torch.Tensor.__torch_dispatch__


class UnreadableLog:
    """One warning per parameter whose gradient cannot be read; then silence for it."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def warn(self, name: str, problem: Unreadable) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("gfprobe: the gradient of %s is %s; it is recorded as missing (has_grad = 0)",
                        name, problem)
