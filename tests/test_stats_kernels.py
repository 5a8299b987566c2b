"""The CPU statistics kernels (the one-pass C kernel and the BLAS fallback) against a float64
reference computed here with NumPy, on the inputs the hot path meets: odd lengths that leave
SIMD tails, masks, NaN and Inf, channels-last and strided layouts, sparse, half and double
precision gradients, parameters without a gradient."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

from gfprobe.adapters import torch_stats
from gfprobe.adapters.torch_params import TrackedParam
from gfprobe.adapters.torch_stats import KERNELS, CpuStats
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo

F = {name: i for i, name in enumerate(STAT_FIELDS)}
AVAILABLE = [k for k in KERNELS if k == "blas" or torch_stats._NATIVE is not None]


def reference(grad: torch.Tensor | None, mask: torch.Tensor | None, numel: int | None = None) -> np.ndarray:
    """The ten statistics in float64, the slow obvious way. ``numel``: the parameter's size, its
    active count when it has no mask (by default the gradient's size, 0 without one)."""
    out = np.zeros(len(STAT_FIELDS))
    size = numel if numel is not None else grad.numel() if grad is not None else 0
    out[F["active"]] = mask.sum().item() if mask is not None else size
    if grad is None:
        return out
    g = grad.detach().to_dense().double().numpy().ravel()
    active = g if mask is None else g[mask.numpy().ravel().astype(bool)]
    for prefix, values in (("", g), ("masked_", active)):
        a = np.abs(values)
        out[F[prefix + "sumsq"]] = np.sum(a * a)
        out[F[prefix + "sum_abs"]] = np.sum(a)
        out[F[prefix + "max_abs"]] = np.max(a) if a.size else 0.0
        out[F[prefix + "nonfinite"]] = np.count_nonzero(~np.isfinite(values))
    out[F["has_grad"]] = 1
    return out


def tracked(param: torch.Tensor, mask: torch.Tensor | None) -> TrackedParam:
    info = ParamInfo("p", tuple(param.shape), "weight", "Linear", "explicit" if mask is not None else "none")
    fixed = None if mask is None else mask.bool()
    return TrackedParam(param, info, None if fixed is None else (lambda: fixed), grad_is_masked=False)


def row_for(grad: torch.Tensor | None, mask: torch.Tensor | None, kernel: str,
            shape: tuple[int, ...] | None = None) -> np.ndarray:
    dtype = grad.dtype if grad is not None else torch.float32
    param = torch.nn.Parameter(torch.zeros(shape or tuple(grad.shape), dtype=dtype))  # type: ignore[union-attr]
    param.grad = grad
    return CpuStats([tracked(param, mask)], kernel).row()[:, 0]


def close(got: np.ndarray, expected: np.ndarray) -> None:
    # float32 gradients are summed in float32 lanes: relative error ~1e-6, checked at 1e-5.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0, equal_nan=True)


GEN = torch.Generator().manual_seed(0)
SHAPES = [(1,), (7,), (23,), (24,), (25,), (4096,), (4097,), (3, 1001), (64, 129), (512, 784)]


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_kernel_matches_float64_reference(kernel: str, shape: tuple[int, ...], masked: bool) -> None:
    grad = torch.randn(shape, generator=GEN) * 3
    mask = (torch.rand(shape, generator=GEN) < 0.3) if masked else None
    close(row_for(grad, mask, kernel), reference(grad, mask))


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize(
    ("case", "poison"),
    [
        ("nan", lambda g: g.view(-1).__setitem__(5, float("nan"))),
        ("inf", lambda g: g.view(-1).__setitem__(-1, float("inf"))),
        ("-inf-and-nan", lambda g: (g.view(-1).__setitem__(100, -float("inf")),
                                    g.view(-1).__setitem__(3000, float("nan")))),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_non_finite_entries_are_counted_and_propagate(kernel: str, case: str,
                                                      poison: Callable[[torch.Tensor], object]) -> None:
    grad = torch.randn(64, 65, generator=GEN)
    poison(grad)
    got = row_for(grad, None, kernel)
    expected = reference(grad, None)
    assert got[F["nonfinite"]] == expected[F["nonfinite"]] > 0
    for field in ("sumsq", "sum_abs", "max_abs"):
        assert np.isnan(got[F[field]]) == np.isnan(expected[F[field]]), field
        assert np.isinf(got[F[field]]) == np.isinf(expected[F[field]]), field


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_non_finite_entries_of_masked_weights_stay_out_of_the_masked_statistics(kernel: str) -> None:
    grad = torch.randn(40, 50, generator=GEN)
    mask = torch.ones(40, 50, dtype=torch.bool)
    mask[3, 7] = mask[20, 49] = False
    grad[3, 7], grad[20, 49] = float("nan"), float("inf")
    got = row_for(grad, mask, kernel)
    assert got[F["nonfinite"]] == 2 and np.isnan(got[F["sumsq"]])
    close(got[4:8], reference(grad, mask)[4:8])
    assert np.isfinite(got[4:7]).all() and got[F["masked_nonfinite"]] == 0


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(8, 16, 5, 5, generator=GEN).to(memory_format=torch.channels_last),
        lambda: torch.randn(30, 40, generator=GEN).t(),  # strided: not dense in either order
        lambda: torch.randn(300, generator=GEN, dtype=torch.float64),
        lambda: torch.randn(300, generator=GEN).to(torch.float16),
        lambda: torch.randn(300, generator=GEN).to(torch.bfloat16),
    ],
    ids=["channels-last", "transposed", "float64", "float16", "bfloat16"],
)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_layouts_and_dtypes(kernel: str, make: Callable[[], torch.Tensor], masked: bool) -> None:
    grad = make()
    mask = (torch.rand(grad.shape, generator=GEN) < 0.5) if masked else None
    close(row_for(grad, mask, kernel), reference(grad.float() if grad.dtype != torch.float64 else grad, mask))


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_sparse_gradient(kernel: str) -> None:
    indices = torch.tensor([[0, 3, 3, 9]])
    grad = torch.sparse_coo_tensor(indices, torch.tensor([1.0, -2.0, 0.5, 4.0]), (12,), check_invariants=True)
    close(row_for(grad, None, kernel), reference(grad.coalesce(), None))


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_parameter_without_gradient_and_empty_gradient(kernel: str) -> None:
    assert row_for(None, None, kernel, shape=(4, 4)).tolist() == [0] * 8 + [16, 0]
    close(row_for(torch.zeros(0), None, kernel), reference(torch.zeros(0), None))


@pytest.mark.skipif(torch_stats._NATIVE is None, reason="the C kernel was not built here")
def test_native_and_blas_kernels_agree_on_a_real_model_step() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 10))
    model(torch.randn(4, 3, 8, 8, generator=GEN)).square().sum().backward()
    params = [tracked(p, None) for p in model.parameters()]
    np.testing.assert_allclose(CpuStats(params, "native").row(), CpuStats(params, "blas").row(), rtol=1e-5)


def test_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        CpuStats([], "fortran")


@pytest.mark.skipif(os.environ.get("GFPROBE_EXPECT_NO_NATIVE") == "1", reason="told the C kernel is absent")
def test_the_c_kernel_was_built() -> None:
    """The suite must exercise the kernel users get; without it only the fallback is tested."""
    assert torch_stats._NATIVE is not None, (
        "gfprobe.adapters._gradstats was not built (no C compiler at install time?); install one "
        "and reinstall, or set GFPROBE_EXPECT_NO_NATIVE=1 to test the BLAS fallback alone")
    assert torch_stats.DEFAULT_KERNEL == "native"


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")  # the cycle it warns of is broken below
@pytest.mark.parametrize("kernel", AVAILABLE)
def test_a_gradient_that_requires_grad(kernel: str) -> None:
    """backward(create_graph=True) leaves gradients that require grad: the kernels read them detached."""
    layer = torch.nn.Linear(5, 3)
    (layer(torch.randn(4, 5, generator=GEN)) ** 2).sum().backward(create_graph=True)
    assert layer.weight.grad is not None and layer.weight.grad.requires_grad
    row = CpuStats([tracked(layer.weight, None)], kernel).row()[:, 0]
    close(row, reference(layer.weight.grad.detach(), None))
    layer.weight.grad = None  # break the cycle create_graph makes
