"""The parameter table: names, kinds and masks of the leaves of a parameter pytree.

A leaf's name is its pytree path with ``.`` between keys (``Dense_0.kernel``, ``layers.0.w``); a
leading ``params.`` shared by every leaf (Flax's ``variables["params"]``) is dropped. Its kind:

* ``norm``: the key above the leaf contains ``norm`` (``LayerNorm_0.scale``, ``BatchNorm_0.bias``,
  Haiku's ``layer_norm.offset``);
* ``bias``: the leaf's own key ends in ``bias``, or is ``b`` (Haiku);
* ``weight``: any other leaf of two or more dimensions (Dense kernels, Conv kernels, embeddings);
* ``other``: the rest (1-D and scalar leaves).

This is the PyTorch adapter's rule read off the path instead of the module class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from gfprobe.errors import ConfigError
from gfprobe.store.writer import ParamInfo

_WRAPPER = "params"  # Flax's top-level collection name
_INDEX_SUFFIX = re.compile(r"_\d+$")  # Flax/Haiku number repeated modules: Dense_0, linear_1


@dataclass(frozen=True)
class ParamTable:
    """Every leaf of the parameter pytree, in ``jax.tree_util`` flattening order."""

    treedef: Any  # jax.tree_util.PyTreeDef
    shapes: tuple[tuple[int, ...], ...]
    infos: tuple[ParamInfo, ...]
    masks: tuple[np.ndarray | None, ...]  # bool, one per leaf; None: not masked

    def matches(self, leaves: Sequence[Any], treedef: Any) -> bool:
        """Whether a pytree flattened to ``leaves``/``treedef`` has this table's layout."""
        return treedef == self.treedef and all(
            tuple(np.shape(leaf)) == shape for leaf, shape in zip(leaves, self.shapes, strict=True))


def key_name(key: Any) -> str:
    """One path entry as text: a dict key, an attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_parts(path: Sequence[Any]) -> list[str]:
    return [key_name(key) for key in path]


def classify(parts: Sequence[str], ndim: int) -> str:
    """The leaf's kind (see the module docstring)."""
    parent = parts[-2] if len(parts) >= 2 else ""
    leaf = parts[-1] if parts else ""
    if "norm" in parent.lower():
        return "norm"
    if leaf.endswith("bias") or leaf == "b":
        return "bias"
    return "weight" if ndim >= 2 else "other"


def module_type(parts: Sequence[str]) -> str:
    """The owning module's type as Flax and Haiku spell it in the path: ``Dense_0`` -> ``Dense``,
    ``mlp/~/linear_1`` -> ``linear``; empty where the key above the leaf is an index."""
    if len(parts) < 2:
        return ""
    parent = parts[-2].rsplit("/", 1)[-1]
    return "" if parent.isdigit() else _INDEX_SUFFIX.sub("", parent)


def build_table(params: Any, masks: Any | None) -> ParamTable:
    """Name and classify every leaf of ``params`` and attach the masks of ``masks``.

    Args:
        params: the parameter pytree (arrays, or anything with a ``shape``).
        masks: ``None``, or a pytree (or flat mapping) whose leaves are masks. A mask is found by
            its path, either the parameter's full path or its name in the run file
            (``{"Dense_0": {"kernel": m}}`` and ``{"Dense_0.kernel": m}`` are the same); entries
            other than 0/False are active. Parameters without a mask are not masked.

    Raises:
        ConfigError: a mask names no parameter, or its shape differs from the parameter's.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ConfigError("gfprobe_jax.watch: params= has no array leaves; pass the model's parameter pytree")
    paths = [path_parts(path) for path, _ in flat]
    shapes = []
    for parts, (_, leaf) in zip(paths, flat, strict=True):
        if not hasattr(leaf, "shape"):
            raise ConfigError(f"gfprobe_jax.watch: parameter {'.'.join(parts)} is a {type(leaf).__name__}, "
                              "not an array; pass the model's parameter pytree")
        shapes.append(tuple(int(d) for d in leaf.shape))
    full = [".".join(parts) for parts in paths]
    strip = all(len(p) > 1 and p[0] == _WRAPPER for p in paths)
    shown = [".".join(p[1:]) if strip else name for p, name in zip(paths, full, strict=True)]
    names = _unique([name or f"param{index}" for index, name in enumerate(shown)])  # a bare array: no path
    given = _mask_leaves(masks)
    resolved: list[np.ndarray | None] = []
    infos = []
    for index, parts in enumerate(paths):
        mask = given.pop(full[index], None)
        alias = given.pop(shown[index], None)
        mask = mask if mask is not None else alias
        if mask is not None:
            mask = _as_mask(mask, shapes[index], names[index])
        resolved.append(mask)
        infos.append(ParamInfo(
            name=names[index], shape=shapes[index], kind=classify(parts, len(shapes[index])),
            module_type=module_type(parts), mask_source="none" if mask is None else "explicit"))
    if given:
        raise ConfigError(f"gfprobe_jax.watch: masks= names parameters that params= does not hold: "
                          f"{', '.join(sorted(given))}; known names: {', '.join(names)}")
    return ParamTable(treedef, tuple(shapes), tuple(infos), tuple(resolved))


def _unique(names: Sequence[str]) -> list[str]:
    """Keys that contain dots can make two paths read the same: number the later ones."""
    seen: set[str] = set()
    out = []
    for index, name in enumerate(names):
        if name in seen:
            name = f"{name}#{index}"
        seen.add(name)
        out.append(name)
    return out


def _mask_leaves(masks: Any | None) -> dict[str, Any]:
    if masks is None:
        return {}
    flat, _ = jax.tree_util.tree_flatten_with_path(masks)
    return {".".join(path_parts(path)): leaf for path, leaf in flat}


def _as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    values = np.asarray(mask)
    if tuple(values.shape) != shape:
        raise ConfigError(f"gfprobe_jax.watch: the mask for {name} has shape {tuple(values.shape)}, "
                          f"the parameter {shape}; give a mask of the parameter's shape")
    active: np.ndarray = values != 0
    return active
