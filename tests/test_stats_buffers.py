"""The CPU hot path's reused state: the C kernel's argument table, filled in place every step,
and the kernel's work split over torch's OpenMP threads.

Reused state must never go stale: whatever happens to a gradient between steps (a new tensor
object, ``set_to_none``, new storage under the same object, another dtype or layout, a mask that
appears or changes), the statistics stay equal to NumPy's of the gradient as it is now. Split
work must give what one thread gives, wherever the cuts fall.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch
from test_stats_kernels import close, reference

from gfprobe.adapters import torch_stats
from gfprobe.adapters.torch_params import TrackedParam
from gfprobe.adapters.torch_stats import CpuStats
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo

F = {name: i for i, name in enumerate(STAT_FIELDS)}
NATIVE = torch_stats._NATIVE
needs_native = pytest.mark.skipif(NATIVE is None, reason="the C kernel was not built here")
BLOCK = 4096  # _gradstats.c's BLOCK: shares are cut at multiples of it inside a tensor
GEN = torch.Generator().manual_seed(7)


def tracked(param: torch.Tensor, name: str) -> TrackedParam:
    return TrackedParam(param, ParamInfo(name, tuple(param.shape), "weight", "Linear", "none"))


class Model:
    """Three parameters and the statistics of each step, checked against NumPy's."""

    def __init__(self, kernel: str) -> None:
        self.params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((64, 33), (33,), (5000,))]
        self.tracked = [tracked(p, f"p{i}") for i, p in enumerate(self.params)]
        self.stats = CpuStats(self.tracked, kernel)
        self.masks: list[torch.Tensor | None] = [None] * len(self.params)

    def set_mask(self, index: int, mask: torch.Tensor) -> None:
        """A mask put on a parameter after the stats were made (as gradual pruning does)."""
        fixed = mask
        self.masks[index] = mask
        self.tracked[index].mask = lambda: fixed

    def check(self, grads: list[torch.Tensor | None] | None = None) -> np.ndarray:
        row = self.stats.row(grads)
        for i, p in enumerate(self.params):
            grad = p.grad if grads is None else grads[i]
            close(row[:, i], reference(grad, self.masks[i], p.numel()))
        return row


def stepped(kernel: str) -> Model:
    """A model after one checked step with a random gradient on every parameter."""
    m = Model(kernel)
    for p in m.params:
        p.grad = torch.randn(p.shape, generator=GEN)
    m.check()
    return m


KERNELS = [k for k in torch_stats.KERNELS if k == "blas" or NATIVE is not None]


@pytest.mark.parametrize("kernel", KERNELS)
def test_statistics_follow_every_change_of_the_gradient_tensor(kernel: str) -> None:
    m = stepped(kernel)
    for p in m.params:  # a new tensor object at a new address, as backward after set_to_none
        kept = p.grad
        p.grad = torch.randn(p.shape, generator=GEN) * 5
        assert p.grad.data_ptr() != kept.data_ptr()
    m.check()
    m.params[0].grad.mul_(-3)  # the same tensor, written in place
    m.check()
    m.params[1].grad = None  # zero_grad(set_to_none=True): no gradient, has_grad 0
    row = m.check()
    assert row[F["has_grad"]].tolist() == [1, 0, 1] and row[0:8, 1].tolist() == [0] * 8
    m.params[1].grad = torch.randn(33, generator=GEN)
    m.check()
    # New storage under the same tensor object: its address changes, the object does not.
    grad = m.params[2].grad
    grad.set_(torch.randn(5000, generator=GEN) * 7)
    assert m.params[2].grad is grad
    m.check()


@pytest.mark.parametrize("kernel", KERNELS)
def test_statistics_follow_a_change_of_dtype_layout_or_kind(kernel: str) -> None:
    m = stepped(kernel)
    m.params[0].grad = torch.randn(33, 64, generator=GEN).t()  # not contiguous: read through a copy
    m.check()
    # Another dtype in the same column (handed in: .grad must keep its parameter's dtype).
    given: list[torch.Tensor | None] = [torch.randn(64, 33, generator=GEN).to(torch.float16), m.params[1].grad,
                                        torch.randn(5000, generator=GEN, dtype=torch.float64)]
    m.check(given)
    m.check()
    m.params[2].grad = torch.randn(5000, generator=GEN).to_sparse()
    m.check()
    m.params[2].grad = torch.randn(5000, generator=GEN)  # and back to the plain way
    m.check()


@pytest.mark.parametrize("kernel", KERNELS)
def test_statistics_follow_masks_that_appear_and_change(kernel: str) -> None:
    m = stepped(kernel)
    mask = torch.rand(64, 33, generator=GEN) < 0.5
    m.set_mask(0, mask)
    row = m.check()
    assert row[F["masked_sumsq"], 0] < row[F["sumsq"], 0]
    mask.zero_()  # edited in place: every weight now inactive
    mask[0, :3] = True
    m.check()
    m.set_mask(0, torch.ones(64, 33, dtype=torch.bool))  # a new mask tensor
    m.check()
    m.set_mask(0, mask)  # back to the sparse mask
    m.check()
    # The mask now comes from pruning: the gradient arrives masked, there is nothing to apply.
    m.tracked[0].grad_is_masked = True
    unmasked = m.stats.row()[:, 0]
    expected = reference(m.params[0].grad, None, m.params[0].numel())
    expected[F["active"]] = int(mask.sum())
    close(unmasked, expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradients_handed_in_replace_the_attributes(kernel: str) -> None:
    m = stepped(kernel)
    given: list[torch.Tensor | None] = [torch.randn(p.shape, generator=GEN) * 3 for p in m.params]
    given[1] = None
    m.check(given)
    m.check()  # the attributes again: nothing of the handed-in gradients is left in the table


def _share_inputs(lengths: list[int], dtypes: list[np.dtype], masked: list[bool],
                  poison: dict[int, list[tuple[int, float]]]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    rng = np.random.default_rng(3)
    arrays, masks = [], []
    for i, (n, dtype, has_mask) in enumerate(zip(lengths, dtypes, masked, strict=True)):
        a = (rng.standard_normal(n) * (i + 1)).astype(dtype)
        for position, value in poison.get(i, []):
            a[position] = value
        arrays.append(a)
        masks.append(rng.random(n) < 0.6 if has_mask else None)
    return arrays, masks


def _native(arrays: list[np.ndarray], masks: list[np.ndarray | None], threads: int, min_share: int) -> np.ndarray:
    n = len(arrays)
    packed = [None if m is None else np.packbits(m, bitorder="little") for m in masks]
    ptrs = np.array([a.ctypes.data for a in arrays], dtype=np.uint64)
    lens = np.array([a.size for a in arrays], dtype=np.int64)
    codes = np.array([0 if a.dtype == np.float32 else 1 for a in arrays], dtype=np.int8)
    mask_ptrs = np.array([0 if p is None else p.ctypes.data for p in packed], dtype=np.uint64)
    out = np.zeros((8, n))
    NATIVE.compute(ptrs, lens, codes, mask_ptrs, out, n, n, threads, min_share)  # type: ignore[union-attr]
    return out


@needs_native
@pytest.mark.parametrize("threads", [2, 3, 5, 8])
@pytest.mark.parametrize("case", ["one-long", "mixed", "non-finite"])
def test_work_split_over_threads_gives_what_one_thread_gives(threads: int, case: str) -> None:
    # Cuts fall inside tensors and between them; tails shorter than a SIMD step; float64.
    lengths = {"one-long": [9 * BLOCK + 13], "mixed": [5, BLOCK - 1, 3 * BLOCK + 8, 17, 2 * BLOCK, 1, 0, 7001],
               "non-finite": [6 * BLOCK + 5, 3 * BLOCK]}[case]
    dtypes = [np.dtype(np.float64) if i % 3 == 2 else np.dtype(np.float32) for i in range(len(lengths))]
    masked = [i % 2 == 1 for i in range(len(lengths))]
    # A NaN and an Inf in different shares of one tensor (its maximum must come out NaN however
    # the parts combine), an Inf alone in the other, at a masked-out position in one case.
    poison = {0: [(BLOCK + 3, np.inf), (5 * BLOCK + 1, np.nan)], 1: [(2 * BLOCK + 9, -np.inf)]} \
        if case == "non-finite" else {}
    arrays, masks = _share_inputs(lengths, dtypes, masked, poison)
    one = _native(arrays, masks, 1, 1)
    split = _native(arrays, masks, threads, 1)
    np.testing.assert_allclose(split, one, rtol=1e-6, atol=0, equal_nan=True)
    np.testing.assert_array_equal(split[[2, 3, 6, 7]], one[[2, 3, 6, 7]])  # maxima and counts: exact
    for i, (a, m) in enumerate(zip(arrays, masks, strict=True)):
        for first, values in ((0, a), (4, a if m is None else a[m])):
            absolute = np.abs(values.astype(np.float64))
            expected = [np.sum(absolute**2), np.sum(absolute), np.max(absolute) if a.size else 0.0,
                        np.count_nonzero(~np.isfinite(values))]
            np.testing.assert_allclose(split[first:first + 4, i], expected, rtol=1e-5, equal_nan=True)


@needs_native
def test_min_share_keeps_small_work_on_one_thread_and_bad_tables_are_refused() -> None:
    arrays, masks = _share_inputs([1000], [np.dtype(np.float32)], [False], {})
    np.testing.assert_array_equal(_native(arrays, masks, 8, 1 << 20), _native(arrays, masks, 1, 1))
    out = np.zeros((8, 1))
    table = (np.zeros(1, np.uint64), np.array([-1], np.int64), np.zeros(1, np.int8), np.zeros(1, np.uint64))
    with pytest.raises(ValueError, match="length -1"):
        NATIVE.compute(*table, out, 1, 1)  # type: ignore[union-attr]


def _row_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # Tensors from NumPy: torch's own parallel ops (a large fill) hang in such a child too.
    param = torch.nn.Parameter(torch.from_numpy(np.zeros(1 << 20, dtype=np.float32)))
    param.grad = torch.from_numpy(np.ones(1 << 20, dtype=np.float32))
    queue.put(float(CpuStats([tracked(param, "w")], "native").row()[F["sum_abs"], 0]))


@needs_native
@pytest.mark.skipif(not torch_stats._TEAM or not hasattr(os, "fork"), reason="no torch OpenMP team to fork from")
def test_a_forked_child_computes_without_waiting_for_its_parents_threads() -> None:
    """GNU OpenMP hangs a parallel region in a child forked after the parent ran one (as it does
    torch's own: such a child is of little use to torch, but gfprobe must not be what hangs)."""
    param = torch.nn.Parameter(torch.zeros(1 << 20))
    param.grad = torch.ones(1 << 20)
    assert CpuStats([tracked(param, "w")], "native").row()[F["sum_abs"], 0] == 1 << 20  # the team has run
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_row_in_child, args=(queue,))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung computing a row")
    assert child.exitcode == 0 and queue.get(timeout=5) == 1 << 20
