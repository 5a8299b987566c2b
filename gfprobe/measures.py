"""Gradient-flow measures (SCIENCE.md §2) as pure functions of recorded statistics.

Inputs are per-step, per-layer sufficient statistics ``[steps, layers]`` of the L weight layers;
outputs are per-step series ``[steps]`` (or per-layer ``[steps, layers]``). No torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEASURES: tuple[str, ...] = ("gf_1", "gf_2", "egf_1", "egf_2", "egf_1_per_weight", "egf_2_per_weight")


@dataclass(frozen=True)
class LayerStats:
    """Sufficient statistics of the weight layers, each ``[steps, layers]``."""

    sumsq: np.ndarray  # Σ g² of the raw gradient
    sum_abs: np.ndarray  # Σ |g| of the raw gradient
    masked_sumsq: np.ndarray  # Σ (g ⊙ m)²
    masked_sum_abs: np.ndarray  # Σ |g ⊙ m|
    active: np.ndarray  # N^l = ||m^l||_0

    @property
    def n_layers(self) -> int:
        return int(self.sumsq.shape[1])


def _norm(sumsq: np.ndarray, sum_abs: np.ndarray, p: int) -> np.ndarray:
    if p == 1:
        return np.asarray(sum_abs, dtype=np.float64)
    if p == 2:
        norms: np.ndarray = np.sqrt(np.asarray(sumsq, dtype=np.float64))
        return norms
    raise ValueError(f"p must be 1 or 2, got {p}")


def layer_norms(stats: LayerStats, p: int) -> np.ndarray:
    """‖g^l ⊙ m^l‖_p per step and layer."""
    return _norm(stats.masked_sumsq, stats.masked_sum_abs, p)


def gf(stats: LayerStats, p: int) -> np.ndarray:
    """‖g‖_p of all weight-layer gradients concatenated, unmasked (the standard gradient flow)."""
    total: np.ndarray = np.asarray(stats.sum_abs if p == 1 else stats.sumsq, dtype=np.float64).sum(axis=1)
    return total if p == 1 else np.sqrt(total)


def egf(stats: LayerStats, p: int) -> np.ndarray:
    """Effective Gradient Flow: (1/L) Σ_l ‖g^l ⊙ m^l‖_p."""
    mean: np.ndarray = layer_norms(stats, p).mean(axis=1)
    return mean


def egf_per_weight(stats: LayerStats, p: int) -> np.ndarray:
    """(1/L) Σ_l ‖g^l ⊙ m^l‖_p / N^l; a layer with no active weight contributes 0."""
    active = np.asarray(stats.active, dtype=np.float64)
    norms = layer_norms(stats, p)
    per_weight = np.divide(norms, active, out=np.zeros_like(norms), where=active > 0)
    mean: np.ndarray = per_weight.mean(axis=1)
    return mean


def compute_all(stats: LayerStats) -> dict[str, np.ndarray]:
    """Every measure in :data:`MEASURES`, per step."""
    if stats.n_layers == 0:
        empty = np.full(stats.sumsq.shape[0], np.nan)
        return {name: empty for name in MEASURES}
    return {
        "gf_1": gf(stats, 1),
        "gf_2": gf(stats, 2),
        "egf_1": egf(stats, 1),
        "egf_2": egf(stats, 2),
        "egf_1_per_weight": egf_per_weight(stats, 1),
        "egf_2_per_weight": egf_per_weight(stats, 2),
    }
