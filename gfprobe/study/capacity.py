"""Exact capacity matching for SC-SDC (SCIENCE.md §4): layer shapes of a sparse/dense pair.

A sparse network S (wider, fixed random mask) and a dense network D (narrower, same depth) get
**exactly** the same number of active weights in every weight layer: D's layer l has
N_l = prod(D's weight shape) weights, and S's mask for that layer gets exactly N_l ones. The
equality therefore holds by construction, and S's mask density N_l / prod(S's weight shape) is
whatever it must be: W_d/W_s for the first and last layers (input and output sizes are fixed)
and (W_d/W_s)² for hidden-to-hidden layers.

Only weights are matched. Biases (and normalisation parameters) are not weights: S has more
of them than D because it has more units, and they are never masked.

No torch here: a study can be planned and validated where only the analysis side is installed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gfprobe.errors import ConfigError
from gfprobe.study.names import ARCHS, DatasetInfo

# The paper's "simple CNN": five conv blocks of these channel widths at sparse_width=32.
CNN_BASE_CHANNELS = (32, 64, 64, 128, 128)
CNN_KERNEL = 3
# Max-pool 2 after these blocks (1-based).
CNN_POOL_AFTER = (2, 4)


@dataclass(frozen=True)
class LayerPlan:
    """One weight layer of a pair: torch weight shapes, ``(out, in)`` or ``(out, in, *kernel)``."""

    name: str
    sparse_shape: tuple[int, ...]
    dense_shape: tuple[int, ...]

    @property
    def sparse_numel(self) -> int:
        """All weights of the sparse layer, masked or not."""
        return math.prod(self.sparse_shape)

    @property
    def dense_active(self) -> int:
        """The dense layer's weight count: every weight is active."""
        return math.prod(self.dense_shape)

    @property
    def sparse_active(self) -> int:
        """The ones in the sparse layer's mask: equal to ``dense_active`` by construction."""
        return self.dense_active

    @property
    def sparse_density(self) -> float:
        """The sparse layer's mask density, exact (not rounded)."""
        return self.sparse_active / self.sparse_numel

    @property
    def dense_fan_in(self) -> int:
        """Inputs per output unit of the dense layer (times kernel positions): its init scale."""
        return math.prod(self.dense_shape[1:])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of this layer."""
        return {
            "name": self.name,
            "sparse_shape": list(self.sparse_shape),
            "dense_shape": list(self.dense_shape),
            "sparse_active": self.sparse_active,
            "dense_active": self.dense_active,
            "sparse_numel": self.sparse_numel,
            "sparse_density": self.sparse_density,
        }


@dataclass(frozen=True)
class PairPlan:
    """A capacity-matched sparse/dense pair.

    ``sparse_width``/``dense_width`` are the hidden width of an MLP, or the first block's
    channel count of the CNN.
    """

    arch: str
    density: float
    sparse_width: int
    dense_width: int
    layers: tuple[LayerPlan, ...]

    @property
    def sparse_active_total(self) -> int:
        return sum(layer.sparse_active for layer in self.layers)

    @property
    def dense_active_total(self) -> int:
        return sum(layer.dense_active for layer in self.layers)

    @property
    def sparse_numel_total(self) -> int:
        return sum(layer.sparse_numel for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the pair, for run files and reports."""
        return {
            "arch": self.arch,
            "density": self.density,
            "sparse_width": self.sparse_width,
            "dense_width": self.dense_width,
            "sparse_active_total": self.sparse_active_total,
            "dense_active_total": self.dense_active_total,
            "sparse_numel_total": self.sparse_numel_total,
            "layers": [layer.to_json() for layer in self.layers],
        }


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` goes to even: 2.5 -> 2)."""
    return math.floor(x + 0.5)


def dense_width(sparse_width: int, density: float) -> int:
    """The dense network's width: ``floor(density × sparse_width + 0.5)``."""
    return round_half_up(density * sparse_width)


def cnn_channels(sparse_width: int) -> tuple[int, ...]:
    """The sparse CNN's five block widths: 32-64-64-128-128 scaled so block 1 has ``sparse_width``."""
    return tuple(max(1, round_half_up(base * sparse_width / CNN_BASE_CHANNELS[0])) for base in CNN_BASE_CHANNELS)


def plan_pair(arch: str, dataset: DatasetInfo, sparse_width: int, density: float,
              hidden_layers: int = 2) -> PairPlan:
    """Plan a capacity-matched sparse/dense pair.

    Args:
        arch: One of ``ARCHS``.
        dataset: The data set; fixes the input and output sizes.
        sparse_width: Hidden width of the sparse MLP, or first-block channels of the sparse CNN.
        density: Fraction in (0, 1]; the dense width is ``floor(density × sparse_width + 0.5)``.
        hidden_layers: Hidden layers of the MLP (ignored for the CNN, which has five blocks).

    Raises:
        ConfigError: An argument is out of range, or the dense network would lose a layer's units.
    """
    _check_common(arch, sparse_width, density)
    if arch == "mlp":
        return _plan_mlp(dataset, sparse_width, float(density), hidden_layers)
    return _plan_cnn(dataset, sparse_width, float(density))


def plan_pairs(arch: str, dataset: DatasetInfo, sparse_width: int, densities: Sequence[float],
               hidden_layers: int = 2) -> list[PairPlan]:
    """``plan_pair`` for each density, in the given order."""
    return [plan_pair(arch, dataset, sparse_width, d, hidden_layers) for d in densities]


def _check_common(arch: str, sparse_width: int, density: float) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    if not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise ConfigError(f"density {density!r} is outside (0, 1]: give the fraction of the sparse network's "
                          "weights that stay active, e.g. 0.1")
    if isinstance(sparse_width, bool) or not isinstance(sparse_width, numbers.Integral) or sparse_width < 1:
        raise ConfigError(f"sparse width {sparse_width!r} must be a whole number of at least 1: give the sparse "
                          "network's hidden units (MLP) or first-block channels (CNN)")


def _plan_mlp(dataset: DatasetInfo, sparse_width: int, density: float, hidden_layers: int) -> PairPlan:
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, numbers.Integral) or hidden_layers < 1:
        raise ConfigError(f"hidden_layers={hidden_layers!r} must be at least 1: an MLP needs one hidden layer "
                          "or more (the paper uses 1, 2 or 4)")
    wd = dense_width(sparse_width, density)
    if wd < 1:
        minimum = _min_width(density, lambda w: (w,))
        raise ConfigError(f"sparse width {sparse_width} is too small for density {density!r}: the dense network "
                          f"would have {density * sparse_width:.3g} units per layer; use a sparse width of at "
                          f"least {minimum}")
    n_in, n_out = dataset.features, dataset.classes
    sparse_sizes = (n_in, *([sparse_width] * hidden_layers), n_out)
    dense_sizes = (n_in, *([wd] * hidden_layers), n_out)
    names = [f"fc{i}" for i in range(1, hidden_layers + 1)] + ["out"]
    layers = tuple(
        LayerPlan(name, (sparse_sizes[i + 1], sparse_sizes[i]), (dense_sizes[i + 1], dense_sizes[i]))
        for i, name in enumerate(names)
    )
    return PairPlan("mlp", density, sparse_width, wd, layers)


def _plan_cnn(dataset: DatasetInfo, sparse_width: int, density: float) -> PairPlan:
    spatial = _cnn_spatial(dataset)
    sparse_ch = cnn_channels(sparse_width)
    dense_ch = _dense_channels(sparse_ch, density)
    if min(dense_ch) < 1:
        block = dense_ch.index(min(dense_ch))
        minimum = _min_width(density, cnn_channels)
        raise ConfigError(f"sparse width {sparse_width} is too small for density {density!r}: the dense CNN's "
                          f"block {block + 1} would have {density * sparse_ch[block]:.3g} channels; use a sparse "
                          f"width of at least {minimum}")
    kernel = (CNN_KERNEL,) * len(spatial)
    layers: list[LayerPlan] = []
    s_in = d_in = dataset.shape[0]
    for i, (s_out, d_out) in enumerate(zip(sparse_ch, dense_ch, strict=True)):
        layers.append(LayerPlan(f"conv{i + 1}", (s_out, s_in, *kernel), (d_out, d_in, *kernel)))
        s_in, d_in = s_out, d_out
    # Max-pool 2 floors, like torch's MaxPool default: 28 -> 14 -> 7.
    final = math.prod(size // 2 ** len(CNN_POOL_AFTER) for size in spatial)
    layers.append(LayerPlan("fc", (dataset.classes, s_in * final), (dataset.classes, d_in * final)))
    return PairPlan("cnn", density, sparse_width, dense_ch[0], tuple(layers))


def _dense_channels(sparse_channels: tuple[int, ...], density: float) -> tuple[int, ...]:
    return tuple(round_half_up(density * c) for c in sparse_channels)


def _cnn_spatial(dataset: DatasetInfo) -> tuple[int, ...]:
    shape = tuple(dataset.shape)
    if len(shape) not in (2, 3):
        raise ConfigError(f"data set {dataset.name!r} has examples of shape {shape}: the CNN needs (channels, "
                          "length) or (channels, height, width); use arch 'mlp' for flat features")
    spatial = shape[1:]
    need = 2 ** len(CNN_POOL_AFTER)
    if min(spatial) < need:
        raise ConfigError(f"data set {dataset.name!r} has examples of shape {shape}, too small for the CNN's "
                          f"{len(CNN_POOL_AFTER)} max-poolings of 2: every spatial size must be at least {need}; "
                          "use arch 'mlp' or larger inputs")
    return spatial


def _min_width(density: float, widths: Callable[[int], tuple[int, ...]]) -> int:
    """The smallest sparse width whose dense counterpart keeps at least one unit in every layer."""
    # Rounding is monotone in the width, so start just below the analytic bound 0.5/density and step up.
    w = max(1, math.floor(0.5 / density) - 2)
    while min(_dense_channels(widths(w), density)) < 1:
        w += 1
    return w
