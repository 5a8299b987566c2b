"""The per-step statistics kernels: the hot path.

Each kernel turns the gradients an optimizer is about to consume into one statistics row
``[len(STAT_FIELDS), P]`` without synchronising the host with a device:

* CPU: the gradients already live in host memory. By the time the optimizer steps they are no
  longer in the CPU caches, so the cost is the number of passes over their memory. The C
  kernel ``_gradstats`` reads each gradient once for all eight statistics (raw and masked),
  split over torch's own OpenMP threads (one core alone cannot draw the memory bandwidth two
  can). Where it was not built (no C compiler at install time) BLAS level-1 routines on
  zero-copy NumPy views compute the same numbers in three passes.
* CUDA: a handful of fused multi-tensor (``torch._foreach_norm``) kernels whose results stay on
  the device; the probe copies a whole batch of rows to pinned host memory asynchronously.
"""

from __future__ import annotations

import array
import ctypes
import glob
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

import numpy as np
import scipy
import torch
from scipy.linalg import blas

from gfprobe.adapters.torch_local import MaskVersion, Unreadable, UnreadableLog, readable
from gfprobe.adapters.torch_params import TrackedParam
from gfprobe.store.schema import STAT_FIELDS

N_FIELDS = len(STAT_FIELDS)
_F = {name: i for i, name in enumerate(STAT_FIELDS)}
_BLAS = {
    np.dtype(np.float32): (blas.sasum, blas.sdot, blas.isamax),
    np.dtype(np.float64): (blas.dasum, blas.ddot, blas.idamax),
}
_KERNEL_DTYPES = {torch.float32: 0, torch.float64: 1}


def _load_native() -> ModuleType | None:
    try:
        from gfprobe.adapters import _gradstats  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _gradstats
    return module


_NATIVE = _load_native()


def _torch_openmp() -> str | None:
    """The OpenMP runtime torch's CPU kernels run on (its bundled libgomp), if this torch has one."""
    found = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")))
    return found[0] if found else None


def _use_torch_threads(native: ModuleType | None) -> bool:
    """Let the C kernel run its shares on torch's OpenMP team (see ``_gradstats.c``, "Threads").
    Only in torch's runtime, never a second one: two teams would spin against each other."""
    path = _torch_openmp()
    return native is not None and path is not None and bool(native.use_openmp(path))


_TEAM = _use_torch_threads(_NATIVE)


def _one_thread_after_fork() -> None:
    """GNU OpenMP cannot run a parallel region in a child forked after its parent ran one (it
    waits for the parent's threads forever): a forked child computes on one thread."""
    global _TEAM
    _TEAM = False


if _TEAM:
    os.register_at_fork(after_in_child=_one_thread_after_fork)
KERNELS = ("native", "blas")
DEFAULT_KERNEL = "native" if _NATIVE is not None else "blas"


def _openblas_thread_setter() -> Callable[[int], int] | None:
    """scipy's bundled OpenBLAS ``openblas_set_num_threads_local`` (None if scipy uses another BLAS).

    OpenBLAS threads level-1 routines on large vectors; its worker threads then spin against
    torch's own intra-op threads, which measured here made a training step ~4x slower.
    """
    libs = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "libscipy_openblas*.so*")
    for path in sorted(glob.glob(libs)):
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


_SET_BLAS_THREADS = _openblas_thread_setter()


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """One BLAS thread for gfprobe's calls only: the setting is thread-local and restored."""
    if _SET_BLAS_THREADS is None:
        yield
        return
    previous = _SET_BLAS_THREADS(1)
    try:
        yield
    finally:
        _SET_BLAS_THREADS(previous)


def _is_current(key: MaskVersion | None, mask: torch.Tensor) -> bool:
    return key is not None and key.matches(mask)


class _ActiveCounts:
    """Active-weight counts, recounted only when a mask tensor changes (new object or in-place
    edit, seen through the tensor's version counter), so dense and fixed-mask runs pay nothing."""

    def __init__(self, tracked: Sequence[TrackedParam]) -> None:
        self._keys: list[MaskVersion | None] = [None] * len(tracked)
        self.values = np.array([t.local_numel for t in tracked], dtype=np.float64)

    def refresh(self, index: int, mask: torch.Tensor) -> float:
        if not _is_current(self._keys[index], mask):
            self._keys[index] = MaskVersion(mask)
            self.values[index] = float(torch.count_nonzero(mask))
        return float(self.values[index])


def _host_stats(flat: np.ndarray) -> tuple[float, float, float, float]:
    """(sum g², sum |g|, max |g|, non-finite count) of a 1-D float array with BLAS."""
    asum, dot, iamax = _BLAS[flat.dtype]
    if flat.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    sum_abs = float(asum(flat))
    if math.isfinite(sum_abs):
        return float(dot(flat, flat)), sum_abs, abs(float(flat[iamax(flat)])), 0.0
    bad = ~np.isfinite(flat)
    return float(dot(flat, flat)), sum_abs, float(np.max(np.abs(flat))), float(np.count_nonzero(bad))


def _is_dense(tensor: torch.Tensor) -> bool:
    """Its elements fill one block of memory from data_ptr() on, in some order."""
    return (tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)
            or tensor.is_contiguous(memory_format=torch.channels_last_3d))


class _Gradients:
    """The readable gradient of each tracked parameter at this step (see ``torch_local``)."""

    def __init__(self, tracked: Sequence[TrackedParam], device: torch.device) -> None:
        self._tracked = tracked
        self._device = device
        self._unreadable = UnreadableLog()
        self._given: Sequence[torch.Tensor | None] | None = None

    def use(self, grads: Sequence[torch.Tensor | None] | None) -> None:
        """This step's gradients in parameter order, when they are not the ``.grad`` attributes
        (compiled code); None: read ``.grad``."""
        self._given = grads if grads is not None and len(grads) == len(self._tracked) else None

    @property
    def given(self) -> Sequence[torch.Tensor | None] | None:
        """The gradients :meth:`use` was handed for this step, or None: read ``.grad``."""
        return self._given

    def of(self, index: int) -> torch.Tensor | None:
        """The gradient of parameter ``index`` as the kernels may read it; None when it has none
        or it cannot be read (warned about once)."""
        t = self._tracked[index]
        grad = t.param.grad if self._given is None else self._given[index]
        if grad is None:
            return None
        try:
            local = readable(grad, self._device)
        except Unreadable as problem:
            self._unreadable.warn(t.info.name, problem)
            return None
        if t.sharding is not None and not t.sharding.owner:
            return local.reshape(-1)[:0]  # a replica another rank counts
        return local

    def mask(self, index: int) -> torch.Tensor | None:
        """Parameter ``index``'s mask as this rank holds it; None when it has none or it cannot
        be read (warned about once; the parameter's gradient is then not read either)."""
        t = self._tracked[index]
        if t.mask is None:
            return None
        try:
            return t.mask()
        except Unreadable as problem:
            self._unreadable.warn(t.info.name, problem)
            return None

    def unreadable(self, index: int, problem: Unreadable) -> None:
        self._unreadable.warn(self._tracked[index].info.name, problem)


def _kernel_input(grad: torch.Tensor, ordered: bool) -> torch.Tensor:
    """The gradient as a dense float32/float64 tensor the kernels can read as flat memory.

    A view whenever possible. ``ordered``: element order must be the standard (row-major) one,
    because a mask is applied element by element. Copies happen only for sparse, half-precision
    or strided gradients, which the hot path of ordinary training does not produce.
    """
    if grad.is_sparse:
        grad = grad.to_dense() if ordered else grad.coalesce().values()
    grad = grad.detach()  # a create_graph gradient requires grad; numpy() refuses those
    if grad.dtype not in _KERNEL_DTYPES:
        grad = grad.float()
    if not (grad.is_contiguous() if ordered else _is_dense(grad)):
        grad = grad.contiguous()
    return grad


def _dense_code(grad: torch.Tensor) -> int | None:
    """The kernel's dtype code when ``grad`` is what ordinary training gives, a plain contiguous
    float32/float64 CPU tensor the kernel may read in place; None sends it the general way
    (``readable`` and ``_kernel_input``). The cheapest tensor attributes only: this runs for every
    parameter at every step."""
    if (type(grad) is torch.Tensor and grad.layout is torch.strided and grad.is_cpu and not grad.is_nested
            and grad.is_contiguous()):
        return _KERNEL_DTYPES.get(grad.dtype)
    return None


class _ArgTable:
    """The native kernel's argument table, allocated once and filled in place every step.

    ``array.array`` rather than NumPy: setting one item is cheaper (57 against 71 ns measured
    here), and the kernel takes either through the buffer protocol.
    """

    def __init__(self, n: int) -> None:
        self.ptrs = array.array("Q", [0] * n)
        self.lens = array.array("q", [0] * n)
        self.dtypes = array.array("b", [0] * n)
        self.masks = array.array("Q", [0] * n)

    def set(self, index: int, flat: torch.Tensor, code: int, mask: np.ndarray | None) -> None:
        self.ptrs[index] = flat.data_ptr()
        self.lens[index] = flat.numel()
        self.dtypes[index] = code
        self.masks[index] = 0 if mask is None else mask.ctypes.data

    def clear(self, index: int) -> None:
        """No gradient: zero elements, so all its statistics come out 0."""
        self.lens[index] = 0
        self.masks[index] = 0


class CpuStats:
    """Statistics of CPU gradients, computed on the host as the step happens.

    ``kernel``: ``"native"`` (the one-pass C kernel) or ``"blas"``; the default is the C kernel
    where it was built.
    """

    def __init__(self, tracked: Sequence[TrackedParam], kernel: str = DEFAULT_KERNEL) -> None:
        if kernel not in KERNELS or (kernel == "native" and _NATIVE is None):
            raise ValueError(f"CPU statistics kernel {kernel!r} is not available here; have {DEFAULT_KERNEL!r}")
        self._tracked = list(tracked)
        self._grads = _Gradients(self._tracked, torch.device("cpu"))
        self._active = _ActiveCounts(tracked)
        self._native = _NATIVE if kernel == "native" else None
        self._table = _ArgTable(len(self._tracked))
        # Masks that must be applied here, prepared for the kernel, keyed by their source tensor.
        self._masks: dict[int, tuple[MaskVersion, np.ndarray]] = {}
        self._buffers: dict[int, np.ndarray] = {}

    def row(self, grads: Sequence[torch.Tensor | None] | None = None) -> np.ndarray:
        """One pass over the parameters gathers what each kernel reads; the kernel runs once.
        ``grads``: see :meth:`_Gradients.use`."""
        self._grads.use(grads)
        out = np.zeros((N_FIELDS, len(self._tracked)), dtype=np.float64)
        out[_F["active"]] = self._active.values
        if self._native is not None:
            self._native_row(out, self._grads.given)
            return out
        inputs = [found for i in range(len(self._tracked)) if (found := self._input(i, out)) is not None]
        with _single_threaded_blas():
            self._blas_rows(out, inputs)
        return out

    def _input(self, index: int, out: np.ndarray) -> tuple[int, torch.Tensor, np.ndarray | None] | None:
        """Parameter ``index``'s (column, gradient as flat memory, mask to apply or None), its active
        count and has_grad set in ``out``; None when there is nothing to read (no gradient, or one
        or a mask that cannot be read, warned about once)."""
        t = self._tracked[index]
        source = self._grads.mask(index)
        if t.mask is not None and source is None:
            return None  # a mask that cannot be read: masked statistics would be wrong
        if source is not None:
            out[_F["active"], index] = self._active.refresh(index, source)
        grad = self._grads.of(index)
        if grad is None:
            return None
        mask = None if source is None or t.grad_is_masked else self._prepared_mask(index, source)
        if mask is not None and source.numel() != grad.numel():  # type: ignore[union-attr]
            # The kernel reads one mask bit per gradient element: never past the mask's end.
            self._grads.unreadable(index, Unreadable(f"masked by a mask of {source.numel()} elements "  # type: ignore[union-attr]
                                                     f"for {grad.numel()} gradient elements"))
            return None
        out[_F["has_grad"], index] = 1.0
        return index, _kernel_input(grad, ordered=mask is not None), mask

    def _native_row(self, out: np.ndarray, given: Sequence[torch.Tensor | None] | None) -> None:
        """Fill the argument table and run the C kernel once for all parameters.

        The per-parameter Python work is the hot path's overhead: a parameter without a mask or
        sharding whose gradient is a plain contiguous float tensor (ordinary training) is entered
        from a handful of cheap attributes; any other goes the general way (``_input``).
        """
        table, has_grad = self._table, out[_F["has_grad"]]
        made: list[torch.Tensor] = []  # copies the general way made: alive until the kernel ran
        for i, t in enumerate(self._tracked):
            grad = t.param.grad if given is None else given[i]
            code = None if grad is None or t.mask is not None or t.sharding is not None else _dense_code(grad)
            if code is not None:
                table.set(i, grad, code, None)  # type: ignore[arg-type]
                has_grad[i] = 1.0
                continue
            found = self._input(i, out)
            if found is None:
                table.clear(i)
                continue
            _, flat, mask = found
            table.set(i, flat, _KERNEL_DTYPES[flat.dtype], mask)
            made.append(flat)
        n = len(self._tracked)
        threads = torch.get_num_threads() if _TEAM else 1
        self._native.compute(table.ptrs, table.lens, table.dtypes, table.masks, out, n, n, threads)  # type: ignore[union-attr]

    def _prepared_mask(self, index: int, source: torch.Tensor) -> np.ndarray:
        """A mask to apply here (explicit and zeros masks; prune and parametrize gradients arrive
        masked already) in the form the kernel reads: bits packed 8 to a byte for the C kernel,
        booleans for BLAS. Prepared again only when the mask tensor changes."""
        cached = self._masks.get(index)
        if cached is None or not cached[0].matches(source):
            active = source.detach().to(device="cpu", dtype=torch.bool).contiguous().numpy().ravel()
            prepared = np.packbits(active, bitorder="little") if self._native is not None else active
            cached = self._masks[index] = (MaskVersion(source), prepared)
        return cached[1]

    def _blas_rows(self, out: np.ndarray, inputs: list[tuple[int, torch.Tensor, np.ndarray | None]]) -> None:
        for i, grad, mask in inputs:
            flat = grad.numpy().ravel(order="K")
            raw = _host_stats(flat)
            out[0:4, i] = raw
            out[4:8, i] = raw if mask is None else _host_stats(self._masked(i, flat, mask))

    def _masked(self, index: int, flat: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The active entries of ``flat``, zeros elsewhere (a selection, not a product: a NaN at a
        masked position belongs to no active weight and must not leak into the masked statistics)."""
        buf = self._buffers.get(index)
        if buf is None or buf.shape != flat.shape or buf.dtype != flat.dtype:
            buf = self._buffers[index] = np.empty_like(flat)
        buf.fill(0)
        np.copyto(buf, flat, where=mask)
        return buf


def _device_input(grad: torch.Tensor) -> torch.Tensor:
    """What the fused kernels take: a dense tensor (only the non-zeros of a sparse one matter)."""
    grad = grad.detach()
    return grad.coalesce().values() if grad.is_sparse else grad


def _to_device(values: Sequence[float] | Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Through pinned memory with non_blocking, so not even set-up copies synchronise the host.
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)


class DeviceStats:
    """Statistics of accelerator gradients with fused kernels; the row stays on the device."""

    def __init__(self, tracked: Sequence[TrackedParam], device: torch.device) -> None:
        self._tracked = list(tracked)
        self._device = device
        self._grads = _Gradients(self._tracked, device)
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._counts = _to_device([t.local_numel for t in tracked], torch.float32, device)
        self._mask_keys: list[MaskVersion | None] = [None] * len(tracked)

    def _index(self, positions: Sequence[int]) -> torch.Tensor:
        key = tuple(positions)
        cached = self._index_cache.get(key)
        if cached is None:  # built once per pattern of present gradients, not per step
            cached = self._index_cache[key] = _to_device(key, torch.long, self._device)
        return cached

    @staticmethod
    def _four(grads: list[torch.Tensor]) -> torch.Tensor:
        f32 = torch.float32
        l2 = torch.stack(torch._foreach_norm(grads, 2, dtype=f32))
        l1 = torch.stack(torch._foreach_norm(grads, 1, dtype=f32))
        linf = torch.stack(torch._foreach_norm(grads, math.inf, dtype=f32))
        # 0 * g is 0 where g is finite and NaN where it is not; ord-0 "norm" counts non-zeros.
        bad = torch.stack(torch._foreach_norm(torch._foreach_mul(grads, 0.0), 0, dtype=f32))
        return torch.stack([l2 * l2, l1, linf, bad])

    def _refresh_counts(self) -> None:
        for i in range(len(self._tracked)):
            mask = self._grads.mask(i)
            if mask is None:
                continue
            if not _is_current(self._mask_keys[i], mask):  # device-side write: no host round trip
                self._mask_keys[i] = MaskVersion(mask)
                self._counts[i] = torch.count_nonzero(mask).to(torch.float32)

    def row(self, grads: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        self._grads.use(grads)
        self._refresh_counts()
        out = torch.zeros((N_FIELDS, len(self._tracked)), dtype=torch.float32, device=self._device)
        out[_F["active"]] = self._counts
        found = [(i, self._grads.of(i)) for i in range(len(self._tracked))]
        present = [i for i, grad in found if grad is not None]
        if not present:
            return out
        dense = [grad for _, grad in found if grad is not None]
        inputs = [_device_input(grad) for grad in dense]
        raw = self._four(inputs)
        index = self._index(present)
        out[0:4].index_copy_(1, index, raw)
        out[4:8].index_copy_(1, index, raw)
        out[_F["has_grad"]].index_fill_(0, index, 1.0)
        masked = [j for j, i in enumerate(present)
                  if self._tracked[i].mask is not None and not self._tracked[i].grad_is_masked]
        if masked:
            masks = [self._grads.mask(present[j]) for j in masked]
            # A selection, not a product: NaN * 0 would leak a masked entry's NaN (as on the CPU).
            # Element by element against the mask, so a sparse gradient is made dense here.
            effective = [torch.where(m.bool(), dense[j].to_dense() if dense[j].is_sparse else dense[j], 0.0)
                         for j, m in zip(masked, masks, strict=True) if m is not None]
            masked = [j for j, m in zip(masked, masks, strict=True) if m is not None]
            out[4:8].index_copy_(1, self._index([present[j] for j in masked]), self._four(list(effective)))
        return out


def make_stats(tracked: Sequence[TrackedParam]) -> CpuStats | DeviceStats:
    devices = {t.param.device for t in tracked}
    if any(d.type == "meta" for d in devices):
        raise NotImplementedError("parameters on the meta device have no data to take statistics of")
    if len(devices) == 1 and next(iter(devices)).type != "cpu":
        return DeviceStats(tracked, next(iter(devices)))
    if all(d.type == "cpu" for d in devices):
        return CpuStats(tracked)
    raise NotImplementedError(f"parameters on several devices ({sorted(map(str, devices))})")
