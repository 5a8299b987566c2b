"""Measures against hand-computed values and against plain autograd on a masked network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gfprobe.measures import MEASURES, LayerStats, compute_all, egf, egf_per_weight, gf, layer_norms
from gfprobe.summary import protocol_indices, summarise


def stats_from_grads(grads: list[np.ndarray], masks: list[np.ndarray]) -> LayerStats:
    """One step's sufficient statistics from explicit gradients and masks."""
    eff = [g * m for g, m in zip(grads, masks, strict=True)]
    row = lambda values: np.array([values], dtype=np.float64)
    return LayerStats(
        sumsq=row([np.sum(g**2) for g in grads]),
        sum_abs=row([np.sum(np.abs(g)) for g in grads]),
        masked_sumsq=row([np.sum(e**2) for e in eff]),
        masked_sum_abs=row([np.sum(np.abs(e)) for e in eff]),
        active=row([np.count_nonzero(m) for m in masks]),
    )


# Two layers, values small enough to check on paper.
G1 = np.array([[3.0, -4.0], [0.0, 1.0]])
M1 = np.array([[1.0, 0.0], [1.0, 1.0]])  # masks out the -4
G2 = np.array([[2.0, -2.0, 1.0]])
M2 = np.array([[1.0, 1.0, 1.0]])
HAND = stats_from_grads([G1, G2], [M1, M2])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # ||g||_1 over both layers unmasked: 3+4+0+1 + 2+2+1
        ("gf_1", 13.0),
        # sqrt(9+16+0+1 + 4+4+1)
        ("gf_2", math.sqrt(35.0)),
        # layer 1 masked: |3|+|0|+|1| = 4; layer 2: 5 -> mean 4.5
        ("egf_1", 4.5),
        # layer 1 masked: sqrt(9+0+1) = sqrt(10); layer 2: 3 -> mean
        ("egf_2", (math.sqrt(10.0) + 3.0) / 2),
        # divided by active counts 3 and 3
        ("egf_1_per_weight", (4.0 / 3 + 5.0 / 3) / 2),
        ("egf_2_per_weight", (math.sqrt(10.0) / 3 + 3.0 / 3) / 2),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_measure_matches_hand_computation(name: str, expected: float) -> None:
    assert compute_all(HAND)[name][0] == pytest.approx(expected, rel=1e-12)


def test_dense_egf_1_is_gf_1_over_layers() -> None:
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=s) for s in [(5, 4), (4, 4), (3, 4)]]
    stats = stats_from_grads(grads, [np.ones_like(g) for g in grads])
    assert egf(stats, 1)[0] == pytest.approx(gf(stats, 1)[0] / 3, rel=1e-12)


def test_fully_masked_layer_contributes_zero_per_weight() -> None:
    stats = stats_from_grads([G1, G2], [np.zeros_like(G1), M2])
    assert egf_per_weight(stats, 2)[0] == pytest.approx((0.0 + 3.0 / 3) / 2)


def test_unknown_norm_order_is_rejected() -> None:
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        layer_norms(HAND, 3)


def test_no_weight_layers_gives_nan_not_a_crash() -> None:
    empty = LayerStats(*(np.zeros((4, 0)) for _ in range(5)))
    assert all(np.isnan(compute_all(empty)[m]).all() for m in MEASURES)


def test_measures_match_plain_autograd_on_a_masked_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Record a masked network with gfprobe and recompute every measure from .grad by hand."""
    import gfprobe
    from gfprobe.analysis.layers import weight_layer_stats
    from gfprobe.store.reader import open_run

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    masks = {f"{i}.weight": (torch.rand_like(model[i].weight) < 0.5).float() for i in (0, 2, 4)}
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = tmp_path / "masked.h5"
    with gfprobe.watch(model, opt, out=out, masks=masks):
        opt.zero_grad()
        model(torch.randn(5, 6)).pow(2).sum().backward()
        reference = {name: p.grad.detach().clone().numpy() for name, p in model.named_parameters()}
        opt.step()

    weights = [n for n in reference if n.endswith("weight")]
    g = [reference[n] for n in weights]
    m = [masks[n].numpy() for n in weights]
    e = [gi * mi for gi, mi in zip(g, m, strict=True)]
    L = len(weights)
    expected = {
        "gf_1": sum(np.abs(gi).sum() for gi in g),
        "gf_2": math.sqrt(sum((gi**2).sum() for gi in g)),
        "egf_1": sum(np.abs(ei).sum() for ei in e) / L,
        "egf_2": sum(np.sqrt((ei**2).sum()) for ei in e) / L,
        "egf_1_per_weight": sum(np.abs(ei).sum() / mi.sum() for ei, mi in zip(e, m, strict=True)) / L,
        "egf_2_per_weight": sum(np.sqrt((ei**2).sum()) / mi.sum() for ei, mi in zip(e, m, strict=True)) / L,
    }
    with open_run(out) as run:
        stats, _cols = weight_layer_stats(run.stream(0))
    measured = compute_all(stats)
    for name, value in expected.items():
        assert measured[name][0] == pytest.approx(value, rel=1e-5), name


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [0]), (3, [0, 1, 2]), (11, list(range(11))), (21, list(range(0, 21, 2))),
     (101, list(range(0, 101, 10)))],
)
def test_protocol_points_are_evenly_spaced_and_include_both_ends(n: int, expected: list[int]) -> None:
    assert protocol_indices(n).tolist() == expected


def test_summaries() -> None:
    values = np.arange(21, dtype=float)
    assert summarise(values, "points") == pytest.approx(np.mean(np.arange(0, 21, 2)))
    assert summarise(values, "mean") == 10.0
    assert summarise(values, "last") == 20.0
    assert summarise(values, "max") == 20.0
    assert math.isnan(summarise(np.array([]), "points"))
