"""CUDA recording: fused kernels, no host synchronisation in the hot path. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gfprobe
from gfprobe.store.reader import open_run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_recording_never_synchronises_and_matches_autograd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).cuda()
    mask = (torch.rand_like(model[2].weight) < 0.5).float()
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    grads: list[torch.Tensor] = []
    opt.register_step_pre_hook(lambda o, a, k: grads.append(model[2].weight.grad.detach().clone()))
    with gfprobe.watch(model, opt, out=tmp_path / "cuda.h5", masks={"2.weight": mask}) as probe:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host sync inside the steps raises
        try:
            for _ in range(300):  # more than one batch: includes a device-to-host flush
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert probe._recorder.failed is None
    with open_run(tmp_path / "cuda.h5") as run:
        s = run.stream(0)
    col = s.params.names.index("2.weight")
    assert s.steps.size == 300
    g = grads[-1].cpu().numpy().astype(np.float64)
    m = mask.cpu().numpy()
    np.testing.assert_allclose(s.stats["sumsq"][-1, col], (g**2).sum(), rtol=1e-4)
    np.testing.assert_allclose(s.stats["sum_abs"][-1, col], np.abs(g).sum(), rtol=1e-4)
    np.testing.assert_allclose(s.stats["max_abs"][-1, col], np.abs(g).max(), rtol=1e-5)
    np.testing.assert_allclose(s.stats["masked_sumsq"][-1, col], ((g * m) ** 2).sum(), rtol=1e-4)
    assert s.stats["active"][-1, col] == m.sum()
    assert s.stats["nonfinite"].sum() == 0
