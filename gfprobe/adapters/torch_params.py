"""Naming, classifying and finding the masks of the parameters an optimizer updates."""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gfprobe.adapters.torch_local import Sharding, Unreadable, fsdp1_shards, local_mask_getter, sharding_of
from gfprobe.errors import FOREIGN_ERRORS, ConfigError
from gfprobe.plugin.manager import call_each, warn_once
from gfprobe.plugin.spec import ModuleMask
from gfprobe.store.schema import (
    BIAS,
    MASK_EXPLICIT,
    MASK_NONE,
    MASK_PARAMETRIZE,
    MASK_SOURCE_BYTES,
    MASK_ZEROS,
    NORM,
    OTHER,
    WEIGHT,
)
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
    source: str = MASK_NONE
    mask: MaskGetter | None = None
    grad_is_masked: bool = False


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
    """Map id(parameter) -> owner for every parameter under ``root``. Masks come from the
    ``gfprobe_module_masks`` hook (torch prune and parametrize built in, plugins first), which
    also names the tensor the optimizer updates as the user knows it: ``fc.weight_orig`` and
    ``fc.parametrizations.weight.original`` are both ``fc.weight``."""
    owners: dict[int, _Owner] = {}
    for mod_name, module in root.named_modules(remove_duplicate=True):
        for found in _module_masks(module):
            owners.setdefault(id(found.param), _Owner(_join(mod_name, found.name), module, found.name,
                                                      found.source, found.mask, found.grad_is_masked))
        if torch.nn.utils.parametrize.is_parametrized(module):  # a parametrization without a mask
            for tensor_name, plist in module.parametrizations.items():
                original = getattr(plist, "original", None)
                if isinstance(original, torch.Tensor):
                    owners.setdefault(id(original), _Owner(_join(mod_name, tensor_name), module, tensor_name,
                                                           MASK_PARAMETRIZE, grad_is_masked=True))
        for local, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), _Owner(_join(mod_name, local), module, local))
    return owners


def _module_masks(module: nn.Module) -> list[ModuleMask]:
    """What every plugin answers for ``module``, each mask function guarded (see ``_guarded``)."""
    found: list[ModuleMask] = []
    for plugin, answer in call_each("gfprobe_module_masks", list, module=module):
        for mask in answer:
            if not (isinstance(mask, ModuleMask) and isinstance(mask.param, torch.Tensor) and callable(mask.mask)
                    and isinstance(mask.name, str) and isinstance(mask.source, str)
                    and 0 < len(mask.source.encode()) <= MASK_SOURCE_BYTES):
                warn_once(plugin, "gfprobe_module_masks", f"answered {mask!r}, not a ModuleMask of a tensor with a "
                          f"source of 1 to {MASK_SOURCE_BYTES} bytes; left out")
                continue
            found.append(dataclasses.replace(mask, mask=_guarded(plugin, mask.mask)))
    return found


def _guarded(plugin: str, get: Callable[[], torch.Tensor]) -> MaskGetter:
    """A plugin's mask function that fails, or gives no tensor, makes that one parameter
    unreadable (recorded as missing, one warning), never the whole recording stop."""

    def mask() -> torch.Tensor:
        try:
            value = get()
        except FOREIGN_ERRORS as exc:
            raise Unreadable(f"masked by plugin {plugin!r}, whose mask failed ({type(exc).__name__}: {exc})") from None
        if not isinstance(value, torch.Tensor):
            raise Unreadable(f"masked by plugin {plugin!r}, whose mask is a {type(value).__name__}, not a tensor")
        return value

    return mask


def discover_roots() -> list[nn.Module]:
    """Top-level modules alive in this process (used when no model was given, as under
    ``gfprobe record``). One pass over the garbage collector's objects, once per optimizer."""
    # type(), not isinstance(): isinstance reads __class__, which deprecated torch proxies warn on.
    modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    children = {id(c) for m in modules for c in m.children()}
    return [m for m in modules if id(m) not in children]


def classify(local: str, module: nn.Module | None, ndim: int) -> str:
    if module is not None and (isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__):
        return NORM
    if local.endswith("bias"):
        return BIAS
    return WEIGHT if ndim >= 2 else OTHER


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
        source, getter, grad_masked = owner.source, owner.mask, owner.grad_is_masked
        if masks == "none":
            source, getter, grad_masked = MASK_NONE, None, False
        elif name in explicit:
            source, getter, grad_masked = MASK_EXPLICIT, _const(explicit.pop(name), param, name), False
        elif masks == "zeros" and source == MASK_NONE and len(shape) >= 2:
            source, getter, grad_masked = MASK_ZEROS, _const(param.detach() != 0, param, name), False
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


def refresh_masks(tracked: list[TrackedParam], module: nn.Module, masks: str | Mapping[str, torch.Tensor]) -> list[int]:
    """Take up the masks ``module`` (and the modules under it) now put on tracked parameters that
    had none, or another kind, when they were first tracked (pruning that starts mid-training).
    Returns the indices that changed. Explicit masks, ``masks="none"`` and sharded parameters
    keep what they had (a sharded parameter's mask needs its shard found at tracking time)."""
    if isinstance(masks, str) and masks == "none":
        return []
    owners = _owners_in(module)
    changed = []
    for index, t in enumerate(tracked):
        owner = owners.get(id(t.param))
        if (owner is None or owner.mask is None or owner.source == t.info.mask_source
                or t.info.mask_source == MASK_EXPLICIT or t.sharding is not None):
            continue
        t.mask, t.grad_is_masked = owner.mask, owner.grad_is_masked
        t.info = dataclasses.replace(t.info, mask_source=owner.source)
        changed.append(index)
    return changed


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
