"""Rank correlations of many bootstrap resamples at once, in one pass over the runs per resample.

A resample is described by how often it takes each original pair: its multiplicity vector c.
Every quantity a rank correlation needs is then an exact integer (or half-integer) function of
c, so the coefficients equal scipy's ``kendalltau`` / ``spearmanr`` of the resampled values,
without an n × n matrix (20 GB at 50,000 runs) or a sort per resample.

**Kendall's τ-b.** The concordant-minus-discordant count is S(c) = Σ_{a<b} c_a c_b sx(a, b)
sy(a, b), with sx(a, b) = sign(x_a − x_b) (sy likewise); the ties in x are Σ_v C_v (C_v − 1) / 2,
C_v counting the draws whose x is v (a pair drawn twice is a tie); τ-b = S / √((P − tx)(P − ty)),
P = N(N − 1)/2. The runs are cut into blocks of about 1.5√n consecutive x values and blocks of
consecutive y values (a value's ties never split). A pair in different x blocks and different y
blocks has its signs fixed by the blocks' order, so those pairs count from a table of draws per
(x block, y block) and two cumulative sums. Only pairs sharing an x block, or sharing a y block,
need their own signs: a small quadratic form per block, one matrix product for a batch of
resamples. About n·√n work per resample instead of n².

**Spearman's ρ.** A value's midrank in a resample is the draws of smaller values plus half its
own draws plus a half; ρ is the draw-weighted Pearson correlation of the midranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import sparse

# Resamples handled together: bounds the memory of the per-batch tables (a few tens of MB at
# 50,000 runs) while keeping the matrix products large enough to be fast.
CHUNK = 64
MIN_BLOCK = 256  # fewer elements: one block, a dense form, is cheaper than the bookkeeping


Statistic = Callable[[np.ndarray, int], np.ndarray]


def kendall(x: np.ndarray, y: np.ndarray, block: int | None = None) -> Statistic:
    """A vectorised statistic for ``scipy.stats.bootstrap``: τ-b of resamples given as arrays of
    indices into (x, y). ``block`` (elements per block) is for tests; by default about 1.5√n."""
    size = block or max(MIN_BLOCK, 3 * math.isqrt(len(x)) // 2)  # measured fastest at 25,000-50,000 runs
    return _by_chunks(_Plan(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), size).tau)


def spearman(x: np.ndarray, y: np.ndarray) -> Statistic:
    """Spearman's ρ of resamples given as arrays of indices into (x, y)."""
    rx, ry = _dense_rank(np.asarray(x)), _dense_rank(np.asarray(y))
    x_values, y_values = _one_hot(rx, int(rx.max()) + 1), _one_hot(ry, int(ry.max()) + 1)

    def rho(index: np.ndarray) -> np.ndarray:
        # Midranks are half-integers: exact in float32 below 2**23 draws. Their products need float64.
        dtype = np.float32 if index.shape[1] < 2**23 else np.float64
        counts = _counts(index, len(rx)).astype(dtype)
        middle = dtype((index.shape[1] + 1) / 2)
        dx = _midranks(counts, x_values.astype(dtype), rx) - middle
        dy = _midranks(counts, y_values.astype(dtype), ry) - middle
        weighted_x, weighted_y = counts.astype(np.float64) * dx, counts.astype(np.float64) * dy
        with np.errstate(invalid="ignore", divide="ignore"):
            out: np.ndarray = _row_dots(weighted_x, dy) / np.sqrt(_row_dots(weighted_x, dx)
                                                                  * _row_dots(weighted_y, dy))
        return out

    return _by_chunks(rho)


def _by_chunks(statistic: Callable[[np.ndarray], np.ndarray]) -> Statistic:
    """``statistic`` of rows of indices, applied CHUNK rows at a time, over any leading axes."""

    def apply(index: np.ndarray, axis: int = -1) -> np.ndarray:
        index = np.moveaxis(np.asarray(index), axis, -1)
        flat = index.reshape(-1, index.shape[-1])
        out = [statistic(flat[i:i + CHUNK]) for i in range(0, len(flat), CHUNK)]
        return np.concatenate(out or [np.empty(0)]).reshape(index.shape[:-1])

    return apply


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """How often each row of ``index`` draws each of the n elements: [rows, n]."""
    return np.stack([np.bincount(row, minlength=n) for row in index]) if len(index) else np.zeros((0, n), np.int64)


def _midranks(counts: np.ndarray, values: sparse.csr_matrix, rank: np.ndarray) -> np.ndarray:
    """Each element's rank among the draws (ties averaged), per resample: [rows, n]."""
    per_value = np.asarray(counts @ values)
    midrank = np.cumsum(per_value, axis=1)
    midrank -= (per_value - 1) / 2
    out: np.ndarray = midrank[:, rank]
    return out


def _dense_rank(values: np.ndarray) -> np.ndarray:
    """0 for the smallest value, 1 for the next, ...: ties share a rank."""
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _blocks(rank: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(block of each element, whether each block holds a single value): consecutive values in
    blocks of about ``size`` elements. A value's ties stay in one block, so blocks are ordered
    like their values; a value with ``size`` or more elements gets a block of its own."""
    counts = np.bincount(rank)
    block_of_value = np.empty(len(counts), dtype=np.int64)
    single: list[bool] = []
    start = filled = 0  # the open block's first value, and its elements so far
    for value, count in enumerate(counts.tolist()):
        if filled and count >= size:
            single.append(value - start == 1)
            start, filled = value, 0
        block_of_value[value] = len(single)
        filled += count
        if filled >= size:
            single.append(value + 1 - start == 1)
            start, filled = value + 1, 0
    if filled:
        single.append(len(counts) - start == 1)
    return block_of_value[rank], np.array(single, dtype=bool)


def _sign(values: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.sign(values[:, None] - values[None, :])
    return out


def _one_hot(label: np.ndarray, n_labels: int) -> sparse.csr_matrix:
    """[elements, labels] with a one where an element carries a label: counts times it sum
    the counts per label."""
    n = len(label)
    return sparse.csr_matrix((np.ones(n, np.float32), (np.arange(n), label)), shape=(n, n_labels))


class _Plan:
    """What does not depend on the resample: ranks, blocks, each block's sign matrix, and an
    order of the elements in which every x block, every cell of an x block and a y block, and
    every x value is a slice of the counts (a second order does the same for y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, size: int) -> None:
        n = self.n = len(x)
        # Counts stay below 2**24, so float32 counts, and sums and products of them, are exact.
        self.dtype = np.float32 if n < 2**24 else np.float64
        rx, ry = _dense_rank(x), _dense_rank(y)
        bx, single_x = _blocks(rx, size)
        by, single_y = _blocks(ry, size)
        self.n_bx, self.n_by = len(single_x), len(single_y)
        order = np.lexsort((ry, rx, by, bx))
        self.position = np.empty(n, np.int64)
        self.position[order] = np.arange(n)
        rx, ry, bx, by = rx[order], ry[order], bx[order], by[order]
        cell = bx * self.n_by + by
        self.cell_starts = _starts(cell)
        self.cells = cell[self.cell_starts]
        self.by_y = np.lexsort((ry, by))  # the y order: y blocks, and y values, as slices
        # Pairs sharing an x block: both signs exact. A block of one x value holds only ties.
        self.x_forms = [(part, self._signs(rx[part], ry[part])) for part in _slices(bx, single_x)]
        # Pairs sharing a y block but not an x block: x's sign is the order of the x blocks.
        bx_y, ry_y = bx[self.by_y], ry[self.by_y]
        self.y_forms = [(part, self._signs(bx_y[part], ry_y[part])) for part in _slices(by[self.by_y], single_y)]
        # Runs of equal values, where there are ties (None: every value differs).
        self.x_by_value = np.argsort(rx, kind="stable") if rx.max() + 1 < n else None
        self.x_ties = None if self.x_by_value is None else _starts(rx[self.x_by_value])
        self.y_ties = _starts(ry_y) if ry.max() + 1 < n else None

    def _signs(self, x_order: np.ndarray, y_rank: np.ndarray) -> np.ndarray:
        out: np.ndarray = (_sign(x_order) * _sign(y_rank)).astype(self.dtype)
        return out

    def tau(self, index: np.ndarray) -> np.ndarray:
        """τ-b of each resample (a row of ``index``)."""
        draws = index.shape[1]
        counts = _counts(self.position[index], self.n).astype(self.dtype)
        by_y = counts[:, self.by_y]
        # Products of a count and a sum of counts stay exact in float32 below 2**24.
        small = float(counts.max(initial=0)) * draws < 2**24
        s = self._cross(counts) + (_forms(counts, self.x_forms, small) + _forms(by_y, self.y_forms, small)) / 2
        pairs = draws * (draws - 1) / 2
        by_x = counts if self.x_by_value is None else counts[:, self.x_by_value]
        tx, ty = _ties(by_x, self.x_ties, draws), _ties(by_y, self.y_ties, draws)
        with np.errstate(invalid="ignore", divide="ignore"):
            tau: np.ndarray = s / np.sqrt((pairs - tx) * (pairs - ty))
        return tau

    def _cross(self, counts: np.ndarray) -> np.ndarray:
        """Pairs in different x blocks and different y blocks, from the draws per block cell."""
        k = np.zeros((len(counts), self.n_bx * self.n_by), dtype=counts.dtype)
        k[:, self.cells] = np.add.reduceat(counts, self.cell_starts, axis=1)
        k = k.reshape(len(counts), self.n_bx, self.n_by)
        before = np.cumsum(k, axis=1)
        before -= k  # draws in earlier x blocks, per y block
        below = np.cumsum(before, axis=2)
        below -= before  # ... in earlier y blocks too: concordant with the cell's draws
        # below - above, where above (earlier x, later y: discordant) = total - below - before
        diff = 2 * below + before - before.sum(axis=2, keepdims=True)
        out: np.ndarray = np.einsum("ra,ra->r", k.reshape(len(k), -1), diff.reshape(len(k), -1), dtype=np.float64)
        return out


def _starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins (``values`` sorted)."""
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.zeros(0, np.int64)


def _slices(blocks: np.ndarray, single: np.ndarray) -> list[slice]:
    """The slice of each block of more than one value (``blocks`` sorted)."""
    bounds = np.searchsorted(blocks, np.arange(len(single) + 1))
    return [slice(int(bounds[b]), int(bounds[b + 1])) for b in np.flatnonzero(~single)]


def _forms(counts: np.ndarray, forms: list[tuple[slice, np.ndarray]], small: bool) -> np.ndarray:
    """Σ over blocks of cᵀ M c: each pair counted twice, as (a, b) and (b, a)."""
    out = np.zeros(len(counts))
    for part, signs in forms:
        c = counts[:, part]
        out += _row_dots(c @ signs, c, small)
    return out


def _ties(counts: np.ndarray, starts: np.ndarray | None, draws: int) -> np.ndarray:
    """Pairs of draws with equal values, Σ_v C_v (C_v − 1) / 2, from counts in which each value's
    elements are a run beginning at ``starts`` (None: every element is a value of its own)."""
    per_value = counts if starts is None else np.add.reduceat(counts, starts, axis=1)
    out: np.ndarray = (np.einsum("ra,ra->r", per_value, per_value, dtype=np.float64) - draws) / 2
    return out


def _row_dots(a: np.ndarray, b: np.ndarray, small: bool = False) -> np.ndarray:
    """Row-wise dot products summed in float64 (the sums may pass 2**24); ``small``: every
    product is below 2**24, so exact where it is taken, in a's type."""
    out: np.ndarray = (a * b).sum(axis=1, dtype=np.float64) if small else np.einsum(
        "ra,ra->r", a, b, dtype=np.float64)
    return out
