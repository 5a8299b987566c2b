"""Bugs found by reviewing the closure, sharding and compile changes; each test failed before its fix."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import gfprobe
from gfprobe.store.merge import shard_files
from gfprobe.store.reader import open_run


def test_a_closure_that_raised_does_not_record_a_later_step_twice(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def failing() -> torch.Tensor:
        raise RuntimeError("out of memory in the closure; the trainer skips the batch")

    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        with pytest.raises(RuntimeError):
            opt.step(failing)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream(0).steps.size == 2


def test_grad_scaler_steps_of_an_optimizer_not_watched_are_not_recorded(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    watched = torch.optim.SGD([model.weight], lr=0.1)
    other = torch.optim.SGD([model.bias], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with gfprobe.watch(model, watched, out=tmp_path / "run.h5"):
        for _ in range(2):
            watched.zero_grad()
            other.zero_grad()
            scaler.scale(model(torch.randn(2, 4)).sum()).backward()
            scaler.step(watched)
            scaler.step(other)
            scaler.update()
    with open_run(tmp_path / "run.h5") as run:
        assert run.n_streams == 1
        assert run.stream(0).params.names == ["weight"]


def test_rank_files_are_found_whatever_characters_the_name_has(tmp_path: Path) -> None:
    out = tmp_path / "x[1]*.h5"
    for rank in (1, 0):
        (tmp_path / f"x[1]*.rank{rank}.h5").touch()
    (tmp_path / "x1.rank0.h5").touch()  # what the unescaped pattern would have matched
    assert [p.name for p in shard_files(out)] == ["x[1]*.rank0.h5", "x[1]*.rank1.h5"]


@pytest.fixture
def single_process_group() -> Iterator[None]:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_step_with_dtensor_gradients_trains_and_records(tmp_path: Path, single_process_group: None) -> None:
    """The op has no DTensor implementation: handed a DTensor it raised in the user's step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    @torch.compile(backend="aot_eager")
    def step() -> None:
        opt.step()

    expected = []
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            expected.append([float((p.grad.full_tensor().double() ** 2).sum()) for p in model.parameters()])
            step()
    with open_run(tmp_path / "run.h5") as run:
        stream = run.stream(0)
    assert stream.steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(stream.stats["sumsq"], np.array(expected), rtol=1e-6)


def test_a_failure_in_the_step_hook_stops_recording_not_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Injected fault: whatever goes wrong in gfprobe's hook never reaches the user's step()."""
    from gfprobe.adapters.torch_probe import Probe

    def broken(*_: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(Probe, "before_step", broken)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level("WARNING", logger="gfprobe"), gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            opt.step(lambda: None)
    assert [r.getMessage() for r in caplog.records if "injected" in r.getMessage()] != []
    assert len([r for r in caplog.records if "recording stopped" in r.getMessage()]) == 1
