"""The statistics of one step, traced into the optimizer's update (runs inside ``jax.jit``).

The same ten numbers as the PyTorch adapter (``gfprobe.store.schema.STAT_FIELDS``), per leaf,
as two arrays: the float statistics, in the gradient's precision but at least float32, and the
counts as int32, which float32 would round above 2**24 entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gfprobe.store.schema import STAT_FIELDS

FLOAT_FIELDS = ("sumsq", "sum_abs", "max_abs", "masked_sumsq", "masked_sum_abs", "masked_max_abs")
INT_FIELDS = ("nonfinite", "masked_nonfinite", "active", "has_grad")
assert sorted(FLOAT_FIELDS + INT_FIELDS) == sorted(STAT_FIELDS)  # the schema's fields, each once
_FLOAT_ROWS = np.array([STAT_FIELDS.index(f) for f in FLOAT_FIELDS])
_INT_ROWS = np.array([STAT_FIELDS.index(f) for f in INT_FIELDS])


def _four(grad: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(Σ|g|², Σ|g|, max|g|, non-finite count) of one array; zeros for an empty one."""
    magnitude = jnp.abs(grad)  # real for complex gradients too
    magnitude = magnitude.astype(jnp.promote_types(magnitude.dtype, jnp.float32))
    return (jnp.sum(magnitude * magnitude), jnp.sum(magnitude), jnp.max(magnitude, initial=0.0),
            jnp.sum(~jnp.isfinite(grad), dtype=jnp.int32))


def leaf_stats(grad: jax.Array, mask: jax.Array | None) -> tuple[list[jax.Array], list[jax.Array]]:
    """Statistics of one leaf in ``FLOAT_FIELDS`` and ``INT_FIELDS`` order."""
    if not jnp.issubdtype(grad.dtype, jnp.inexact):  # an integer leaf (float0 gradient): no gradient
        zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        active = jnp.asarray(grad.size if mask is None else jnp.count_nonzero(mask), jnp.int32)
        return [zero_f] * 6, [zero_i, zero_i, active, zero_i]
    raw = _four(grad)
    if mask is None:
        masked, active = raw, jnp.asarray(grad.size, jnp.int32)
    else:
        # A selection, not a product: NaN * 0 would leak a masked entry's NaN into g ⊙ m.
        masked = _four(jnp.where(mask, grad, jnp.zeros((), grad.dtype)))
        active = jnp.count_nonzero(mask).astype(jnp.int32)
    floats = [raw[0], raw[1], raw[2], masked[0], masked[1], masked[2]]
    return floats, [raw[3], masked[3], active, jnp.ones((), jnp.int32)]


def step_stats(grads: Sequence[jax.Array], masks: Sequence[jax.Array | None]) -> tuple[jax.Array, jax.Array]:
    """All leaves: floats ``[len(FLOAT_FIELDS), P]`` and counts ``[len(INT_FIELDS), P]``."""
    floats, ints = zip(*(leaf_stats(g, m) for g, m in zip(grads, masks, strict=True)), strict=True)
    return (jnp.stack([jnp.stack(f) for f in zip(*floats, strict=True)]),
            jnp.stack([jnp.stack(i) for i in zip(*ints, strict=True)]))


def assemble(floats: np.ndarray, ints: np.ndarray) -> np.ndarray:
    """The host's row ``[len(STAT_FIELDS), P]`` (float64, the recorder's type) from both arrays."""
    row = np.empty((len(STAT_FIELDS), floats.shape[1]), dtype=np.float64)
    row[_FLOAT_ROWS] = floats
    row[_INT_ROWS] = ints
    return row
