"""The statistics kernels never read memory they do not own.

The C kernel reads ``data_ptr()`` directly; a DTensor, a wrapper subclass or a meta tensor handed
to it would be a segfault in the training job. Each such gradient is either read through a safe
path (exactly) or skipped with one warning naming the parameter, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.testing._internal.two_tensor import TwoTensor

import gfprobe
from gfprobe.adapters.torch_local import Unreadable, readable
from gfprobe.adapters.torch_params import track
from gfprobe.adapters.torch_stats import _NATIVE, KERNELS, CpuStats
from gfprobe.store.reader import open_run
from gfprobe.store.schema import STAT_FIELDS

F = {name: i for i, name in enumerate(STAT_FIELDS)}
AVAILABLE = [k for k in KERNELS if k != "native" or _NATIVE is not None]


def row_for(grads: dict[str, torch.Tensor], kernel: str) -> tuple[np.ndarray, list[str]]:
    """One statistics row for parameters whose .grad is set to ``grads``."""
    params = []
    for grad in grads.values():
        param = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
        param.grad = grad
        params.append(param)
    tracked = track(params, [], "auto")
    return CpuStats(tracked, kernel).row(), [t.info.name for t in tracked]


@pytest.fixture
def single_process_group() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_wrapper_subclass_is_skipped_with_one_warning(kernel: str, caplog: pytest.LogCaptureFixture) -> None:
    plain = torch.randn(5, 3)
    wrapped = TwoTensor(torch.randn(4), torch.randn(4))
    with caplog.at_level(logging.WARNING, logger="gfprobe"):
        out, names = row_for({"plain": plain, "wrapped": wrapped}, kernel)
        row_for({"plain": plain, "wrapped": wrapped}, kernel)
    assert out[F["has_grad"]].tolist() == [1.0, 0.0]
    assert out[F["sumsq"], 0] == pytest.approx(float((plain.double() ** 2).sum()), rel=1e-6)
    assert out[F["sumsq"], 1] == 0.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "TwoTensor" in w]) >= 1 and names[1] in warnings[0]


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_python_subclass_over_ordinary_storage_is_read(kernel: str) -> None:
    class Tagged(torch.Tensor):
        pass

    grad = torch.randn(7, 2)
    out, _ = row_for({"tagged": grad.as_subclass(Tagged)}, kernel)
    assert out[F["has_grad"], 0] == 1.0
    assert out[F["sum_abs"], 0] == pytest.approx(float(grad.double().abs().sum()), rel=1e-6)


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_and_compressed_layouts_give_the_dense_statistics(kernel: str) -> None:
    dense = torch.zeros(6, 5)
    dense[1, 2], dense[4, 0], dense[5, 4] = 3.0, -4.0, 0.5
    out, _ = row_for({"coo": dense.to_sparse(), "dense": dense}, kernel)
    for column in (0, 1):
        assert out[F["sumsq"], column] == pytest.approx(25.25)
        assert out[F["sum_abs"], column] == pytest.approx(7.5)
        assert out[F["max_abs"], column] == 4.0
    # A compressed layout cannot be a parameter's .grad; gradients handed to the kernels can be.
    assert torch.equal(readable(dense.to_sparse_csr(), torch.device("cpu")), dense)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor", "ignore:The PyTorch API of nested tensors")
def test_quantized_complex_meta_and_nested_gradients() -> None:
    cpu = torch.device("cpu")
    q = torch.quantize_per_tensor(torch.tensor([0.5, -1.0, 2.0]), scale=0.5, zero_point=0, dtype=torch.qint8)
    assert readable(q, cpu).tolist() == [0.5, -1.0, 2.0]
    assert readable(torch.tensor([3 + 4j]), cpu).tolist() == [5.0]  # |g|
    for grad, problem in ((torch.empty(3, device="meta"), "meta"),
                          (torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), "nested")):
        with pytest.raises(Unreadable, match=problem):
            readable(grad, cpu)


def test_meta_parameters_stop_recording_not_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Linear(4, 2, device="meta")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="gfprobe"), gfprobe.watch(model, opt, out=tmp_path / "r.h5"):
        model(torch.empty(3, 4, device="meta")).sum().backward()
        opt.step()  # training goes on
    assert any("meta device" in r.getMessage() for r in caplog.records)


def test_dtensor_gradients_are_read_through_their_local_shard(
        tmp_path: Path, single_process_group: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for step in range(3):
            opt.zero_grad()
            model(torch.randn(5, 6, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
            seen.append([float((p.grad.full_tensor().double() ** 2).sum()) for p in model.parameters()])
            opt.step()
    with open_run(tmp_path / "run.h5") as run:  # world size 1: a whole run, not a rank file
        stream = run.stream(0)
    assert stream.params.shapes == [(8, 6), (8,), (3, 8), (3,)]
    np.testing.assert_allclose(stream.stats["sumsq"], np.array(seen), rtol=1e-6)
