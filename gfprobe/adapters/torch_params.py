"""Naming, classifying and finding the masks of the parameters an optimizer updates."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gfprobe.adapters.torch_local import Sharding, fsdp1_shards, local_mask_getter, sharding_of
from gfprobe.errors import ConfigError
from gfprobe.store.writer import ParamInfo

# Prefixes that wrappers add in front of the user's own parameter names.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)

MaskGetter = Callable[[], torch.Tensor]


@dataclass
class TrackedParam:
    """A parameter as the probe sees it: its name, where its mask lives, and whether the
    gradient the optimizer gets is already masked (true for prune and parametrize, whose
    ``weight = original * mask`` zeroes masked gradients by the chain rule)."""

    param: torch.Tensor
    info: ParamInfo
    mask: MaskGetter | None = None
    grad_is_masked: bool = False
    sharding: Sharding | None = None  # set when this rank holds only a shard (DTensor)

    @property
    def local_numel(self) -> int:
        """Elements this process counts: all of them, its shard's, or 0 for a replica it does not own."""
        if self.sharding is None:
            return self.info.numel
        return self.sharding.local_numel if self.sharding.owner else 0


@dataclass
class _Owner:
    name: str
    module: nn.Module | None
    local: str
    source: str = "none"
    mask: MaskGetter | None = None


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.replace("._orig_mod.", ".")  # a compiled submodule inside a larger model


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if prefix else local


def _owners_in(root: nn.Module) -> dict[int, _Owner]:
    """Map id(parameter) -> owner for every parameter under ``root``, seeing through prune and
    parametrize so that ``fc.weight_orig`` and ``fc.parametrizations.weight.original`` are both
    reported as ``fc.weight``."""
    owners: dict[int, _Owner] = {}
    for mod_name, module in root.named_modules(remove_duplicate=True):
        if torch.nn.utils.parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                original = getattr(plist, "original", None)
                if isinstance(original, torch.Tensor):
                    owners.setdefault(id(original), _Owner(
                        _join(mod_name, tensor_name), module, tensor_name, "parametrize",
                        _parametrize_mask(plist)))
        for local, param in module.named_parameters(recurse=False):
            if id(param) in owners:
                continue
            if local.endswith("_orig") and hasattr(module, local[:-5] + "_mask"):
                base = local[:-5]
                owners[id(param)] = _Owner(_join(mod_name, base), module, base, "prune",
                                           _attr_getter(module, base + "_mask"))
            else:
                owners[id(param)] = _Owner(_join(mod_name, local), module, local)
    return owners


def _parametrize_mask(plist: nn.Module) -> MaskGetter | None:
    for parametrization in plist:  # type: ignore[attr-defined]
        if isinstance(getattr(parametrization, "mask", None), torch.Tensor):
            return _attr_getter(parametrization, "mask")
    return None


def _attr_getter(obj: object, attr: str) -> MaskGetter:
    # Fetched at every step: pruning again replaces the buffer object.
    return lambda: getattr(obj, attr)


def discover_roots() -> list[nn.Module]:
    """Top-level modules alive in this process (used when no model was given, as under
    ``gfprobe record``). One pass over the garbage collector's objects, once per optimizer."""
    # type(), not isinstance(): isinstance reads __class__, which deprecated torch proxies warn on.
    modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    children = {id(c) for m in modules for c in m.children()}
    return [m for m in modules if id(m) not in children]


def classify(local: str, module: nn.Module | None, ndim: int) -> str:
    if module is not None and (isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__):
        return "norm"
    if local.endswith("bias"):
        return "bias"
    return "weight" if ndim >= 2 else "other"


def track(
    params: Iterable[torch.Tensor],
    roots: Iterable[nn.Module],
    masks: str | Mapping[str, torch.Tensor],
) -> list[TrackedParam]:
    """Name every parameter (by the largest module tree that owns it) and resolve its mask."""
    params = list(params)
    roots = list(roots)
    # FSDP1 wraps the model: when a user hands watch() the inner model, its FSDP units are above it.
    fsdp1 = fsdp1_shards(discover_roots() if "torch.distributed.fsdp" in sys.modules else roots)
    owners: dict[int, _Owner] = {}
    for root in sorted(roots, key=lambda r: -sum(1 for _ in r.parameters())):
        for key, owner in _owners_in(root).items():
            owners.setdefault(key, owner)
    explicit = _explicit_masks(masks)
    tracked: list[TrackedParam] = []
    seen_names: set[str] = set()
    for index, param in enumerate(params):
        owner = owners.get(id(param)) or _Owner(f"param{index}", None, f"param{index}")
        name = _strip(owner.name)
        if name in seen_names:
            name = f"{name}#{index}"
        seen_names.add(name)
        shard = fsdp1.get(id(param))
        shape = shard.shape if shard else tuple(param.shape)  # a DTensor's shape is the unsharded one
        source, getter, grad_masked = owner.source, owner.mask, owner.source in ("prune", "parametrize")
        if masks == "none":
            source, getter, grad_masked = "none", None, False
        elif name in explicit:
            source, getter, grad_masked = "explicit", _const(explicit.pop(name), param, name), False
        elif masks == "zeros" and source == "none" and len(shape) >= 2:
            source, getter, grad_masked = "zeros", _const(param.detach() != 0, param, name), False
        sharding = sharding_of(param, shard)
        if sharding is not None and shard is None and getter is not None:
            getter = local_mask_getter(getter, param)
        info = ParamInfo(
            name=name,
            shape=shape,
            kind=classify(owner.local, owner.module, len(shape)),
            module_type=type(owner.module).__name__ if owner.module is not None else "",
            mask_source=source,
        )
        tracked.append(TrackedParam(param, info, getter, grad_masked, sharding))
    if explicit:
        known = ", ".join(t.info.name for t in tracked)
        raise ConfigError(f"masks= names parameters the optimizer does not update: "
                          f"{', '.join(sorted(explicit))}; known names: {known}")
    return tracked


def _explicit_masks(masks: str | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(masks, str):
        if masks not in ("auto", "zeros", "none"):
            raise ConfigError(f"masks must be 'auto', 'zeros', 'none' or a {{name: mask}} mapping, got {masks!r}")
        return {}
    return {_strip(k): v for k, v in masks.items()}


def _const(mask: torch.Tensor, param: torch.Tensor, name: str) -> MaskGetter:
    if tuple(mask.shape) != tuple(param.shape):
        raise ConfigError(f"mask for {name} has shape {tuple(mask.shape)}, the parameter {tuple(param.shape)}")
    fixed = mask.detach().to(device=param.device, dtype=torch.bool)
    return lambda: fixed
