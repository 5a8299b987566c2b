"""gfprobe's built-in ``gfprobe_module_masks``: the masks of torch prune and parametrize.

Both leave the optimizer a tensor other than the one the model computes with
(``fc.weight_orig``, ``fc.parametrizations.weight.original``) and compute
``weight = original * mask``, so the gradient the optimizer gets is already masked. Lightning's
``ModelPruning`` callback prunes through ``torch.nn.utils.prune``: its masks are found here too.
The module is registered as a plugin at start-up, so it imports torch only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gfprobe.plugin.spec import ModuleMask, hookimpl


@hookimpl
def gfprobe_module_masks(module: Any) -> list[ModuleMask]:
    return [*_parametrize_masks(module), *_prune_masks(module)]


def _parametrize_masks(module: Any) -> list[ModuleMask]:
    from torch.nn.utils import parametrize

    from gfprobe.store.schema import MASK_PARAMETRIZE  # here: the schema imports NumPy

    if not parametrize.is_parametrized(module):
        return []
    found = []
    for tensor_name, plist in module.parametrizations.items():
        original = getattr(plist, "original", None)  # None when the parametrization unpacks to several tensors
        mask = _parametrize_mask(plist)
        if original is not None and mask is not None:
            found.append(ModuleMask(tensor_name, original, mask, MASK_PARAMETRIZE))
    return found


def _parametrize_mask(plist: Any) -> Callable[[], Any] | None:
    import torch

    for parametrization in plist:
        if isinstance(getattr(parametrization, "mask", None), torch.Tensor):
            return _attr_getter(parametrization, "mask")
    return None


def _prune_masks(module: Any) -> list[ModuleMask]:
    from gfprobe.store.schema import MASK_PRUNE

    return [ModuleMask(local[:-5], param, _attr_getter(module, local[:-5] + "_mask"), MASK_PRUNE)
            for local, param in module.named_parameters(recurse=False)
            if local.endswith("_orig") and hasattr(module, local[:-5] + "_mask")]


def _attr_getter(obj: object, attr: str) -> Callable[[], Any]:
    # Fetched at every step: pruning again replaces the buffer object.
    return lambda: getattr(obj, attr)
