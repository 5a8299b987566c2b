"""``optimizer.step(closure)``: the recorded gradient is the one the optimizer consumes, at every step.

With a closure, the gradient ``step()`` consumes does not exist when ``step()`` is entered: the
closure computes it (forward, backward, and in Lightning also accumulation's last micro-batch
and clipping). These tests run real stacks and compare gfprobe's Σg² with a snapshot taken
independently of gfprobe, step by step and parameter by parameter, so that recording one step
early (the stale gradient) or one closure evaluation late would fail:

* Lightning (``tests/scripts/train_lightning.py``): the optimizer is plain SGD written in the
  script that snapshots the gradient after running the closure, i.e. what it consumes.
* LBFGS (``tests/scripts/train_lbfgs.py``): the script's own closure snapshots the gradient of
  its first evaluation within each ``step()`` call, the one gfprobe promises to record.
* ``gfprobe.watch`` on in-process loops: SGD with a closure, an optimizer that ignores its
  closure, and LBFGS.

Each stack also runs once without gfprobe: exit code, stdout (which carries a SHA-256 of the
final weights) and the saved final weights must be identical ("never harm").
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SCRIPTS, child_env, record
from torch import nn

import gfprobe
from gfprobe.store.reader import StreamData, open_run

# gfprobe's kernel sums float32 gradients in float32 lanes over blocks, then the blocks in float64:
# documented relative error ~1e-6 (measured here: ~2e-7). The snapshots are exact float64 sums.
# bf16-mixed autocasts the computation only: parameters and their gradients stay float32
# (asserted below), so the same tolerance applies.
RTOL = 1e-6
LIGHTNING = "train_lightning.py"
LBFGS = "train_lbfgs.py"
STEPS = 10
# One Lightning fit per configuration, all in one process (importing Lightning alone takes
# ~13 s here); each fit has a fresh model and optimizer, so gfprobe writes one stream per fit.
LIGHTNING_CONFIGS: dict[str, tuple[str, ...]] = {
    "auto-acc1-fp32": (),
    "auto-acc1-clip-fp32": ("--clip", "1.0"),
    "auto-acc2-fp32": ("--accumulate", "2"),
    "auto-acc2-clip-fp32": ("--accumulate", "2", "--clip", "1.0"),
    "auto-acc1-bf16": ("--precision", "bf16-mixed"),
    "auto-acc1-clip-bf16": ("--precision", "bf16-mixed", "--clip", "1.0"),
    "auto-acc2-bf16": ("--precision", "bf16-mixed", "--accumulate", "2"),
    "auto-acc2-clip-bf16": ("--precision", "bf16-mixed", "--accumulate", "2", "--clip", "1.0"),
    "manual-acc1-fp32": ("--manual",),
    "manual-acc2-fp32": ("--manual", "--accumulate", "2"),
    "manual-acc2-clip-fp32": ("--manual", "--accumulate", "2", "--clip", "1.0"),
}
CLIP_PAIRS = [(name.replace("-clip", ""), name) for name in LIGHTNING_CONFIGS if "-clip" in name]


# -- helpers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackRun:
    """One script run under ``gfprobe record`` and once plainly, with what each saved."""

    recorded: subprocess.CompletedProcess[str]
    plain: subprocess.CompletedProcess[str]
    run_file: Path
    saved: Any  # what the recorded run saved with torch.save
    saved_plain: Any


def run_both(tmp: Path, script: str, args: list[str]) -> StackRun:
    """Run ``script`` plainly and under ``gfprobe record`` side by side (two CPUs: half the wait)."""
    plain_cmd = [sys.executable, str(SCRIPTS / script), *args, "--save", str(tmp / "plain.pt")]
    plain = subprocess.Popen(plain_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        recorded = record(tmp / "run.h5", script, *args, "--save", str(tmp / "recorded.pt"))
        out, err = plain.communicate(timeout=240)
    finally:
        if plain.poll() is None:
            plain.kill()
            plain.communicate()
    assert recorded.returncode == 0, recorded.stderr
    assert plain.returncode == 0, err
    done = subprocess.CompletedProcess(plain_cmd, plain.returncode, out, err)
    return StackRun(recorded, done, tmp / "run.h5", torch.load(tmp / "recorded.pt"), torch.load(tmp / "plain.pt"))


def read_stream(path: Path, index: int) -> StreamData:
    with open_run(path) as run:
        return run.stream(index)


def assert_consumed(stream: StreamData, names: list[str], expected: np.ndarray) -> None:
    """One record per optimizer step, and each equals the consumed Σg² of its own step."""
    n_steps = expected.shape[0]
    assert stream.params.names == names
    assert stream.steps.tolist() == list(range(n_steps)), "one record per optimizer step"
    assert stream.skipped.tolist() == [0] * n_steps
    assert stream.stats["has_grad"].tolist() == [[1] * len(names)] * n_steps
    for step in range(n_steps):
        np.testing.assert_allclose(stream.stats["sumsq"][step], expected[step], rtol=RTOL, atol=0,
                                   err_msg=f"Σg² recorded at step {step} is not the one consumed")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def total_norm(sumsq: torch.Tensor) -> float:
    return float(sumsq.sum().sqrt())


# -- Lightning -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lightning(tmp_path_factory: pytest.TempPathFactory) -> StackRun:
    """Every Lightning configuration trained in one process, recorded and plain."""
    args: list[str] = []
    for extra in LIGHTNING_CONFIGS.values():  # the script's groups of options, separated by "+"
        args += [*(["+"] if args else []), "--steps", str(STEPS), *extra]
    return run_both(tmp_path_factory.mktemp("lightning"), LIGHTNING, args)


def lightning_result(run: StackRun, config: str) -> tuple[int, dict[str, Any]]:
    index = list(LIGHTNING_CONFIGS).index(config)
    return index, run.saved[index]


@pytest.mark.slow
def test_lightning_never_harms_training(lightning: StackRun) -> None:
    """Same stdout (configurations, step counts, weight digests) and bit-identical final weights."""
    assert lightning.recorded.stdout == lightning.plain.stdout
    assert lightning.recorded.stdout.count("weights ") == len(LIGHTNING_CONFIGS)
    assert len(lightning.saved) == len(lightning.saved_plain) == len(LIGHTNING_CONFIGS)
    for recorded, plain in zip(lightning.saved, lightning.saved_plain, strict=True):
        assert_same_weights(recorded["weights"], plain["weights"])
    with open_run(lightning.run_file) as run:
        assert run.metadata["status"] == "complete"
        assert run.n_streams == len(LIGHTNING_CONFIGS), "one stream per fit (per optimizer)"


@pytest.mark.slow
@pytest.mark.parametrize("config", list(LIGHTNING_CONFIGS))
def test_lightning_records_the_gradient_the_optimizer_consumed(lightning: StackRun, config: str) -> None:
    index, saved = lightning_result(lightning, config)
    assert saved["grad_dtypes"] == ["torch.float32"], "the tolerance assumes float32 gradients"
    assert saved["sumsq"].shape[0] == STEPS, "the script made as many optimizer steps as asked"
    stream = read_stream(lightning.run_file, index)
    assert stream.optimizer == "SnapshotSGD"
    assert_consumed(stream, saved["names"], saved["sumsq"].numpy())


@pytest.mark.slow
@pytest.mark.parametrize(("unclipped", "clipped"), CLIP_PAIRS, ids=[c for _, c in CLIP_PAIRS])
def test_lightning_clipping_changed_the_recorded_gradient(lightning: StackRun, unclipped: str, clipped: str) -> None:
    """Without this, the clipped configurations could pass with clipping never taking effect.

    Both runs start from the same weights and data, so their first pre-clip gradients are the
    same: clipping to norm 1.0 must have scaled every parameter's gradient by one factor.
    """
    _, free = lightning_result(lightning, unclipped)
    index, clip = lightning_result(lightning, clipped)
    before, after = free["sumsq"][0], clip["sumsq"][0]
    assert total_norm(before) > 2.0, "the unclipped gradient must exceed the clip value"
    assert total_norm(after) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose((after / before).numpy(), 1.0 / float(before.sum()), rtol=1e-4)
    assert all(total_norm(row) <= 1.0 + 1e-5 for row in clip["sumsq"])
    recorded = read_stream(lightning.run_file, index).stats["sumsq"]
    assert np.sqrt(recorded[0].sum()) == pytest.approx(1.0, rel=1e-5), "gfprobe saw the clipped gradient"


# -- LBFGS -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lbfgs(tmp_path_factory: pytest.TempPathFactory) -> StackRun:
    return run_both(tmp_path_factory.mktemp("lbfgs"), LBFGS, ["--steps", "8", "--max-iter", "4"])


@pytest.mark.slow
def test_lbfgs_records_the_first_closure_gradient_of_every_step(lbfgs: StackRun) -> None:
    """LBFGS passes its closure positionally and calls it max_iter times per step()."""
    saved = lbfgs.saved
    assert saved["calls"] == [4] * 8, "several closure calls per step, or 'first' proves nothing"
    assert_consumed(read_stream(lbfgs.run_file, 0), saved["names"], saved["sumsq"].numpy())


@pytest.mark.slow
def test_lbfgs_never_harms_training(lbfgs: StackRun) -> None:
    assert lbfgs.recorded.stdout == lbfgs.plain.stdout
    assert_same_weights(lbfgs.saved["weights"], lbfgs.saved_plain["weights"])


# -- gfprobe.watch on in-process loops -------------------------------------------------------
Step = Callable[[torch.optim.Optimizer, Callable[[], torch.Tensor]], object]
PASSING: dict[str, Step] = {
    "positional": lambda opt, closure: opt.step(closure),
    "keyword": lambda opt, closure: opt.step(closure=closure),
}


class ClosureIgnoringSGD(torch.optim.Optimizer):
    """Accepts a closure, as the Optimizer API allows, and never calls it: consumes ``.grad`` as is."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(n)]


def sumsq(model: nn.Module) -> list[float]:
    return [float(p.grad.double().square().sum()) for p in model.parameters()]


def names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize("passing", list(PASSING))
def test_watch_step_closure_records_the_gradient_the_closure_left(tmp_path: Path, passing: str) -> None:
    """SGD with a closure doing zero_grad, forward and backward: ``.grad`` on entry to step() is
    the previous step's (or none); the consumed one is what the closure leaves."""
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    consumed: list[list[float]] = []
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for x, y in batches(6):
            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                consumed.append(sumsq(model))
                return loss

            PASSING[passing](opt, closure)
    assert_consumed(read_stream(tmp_path / "run.h5", 0), names(model), np.array(consumed))


@pytest.mark.parametrize("passing", list(PASSING))
def test_watch_step_that_ignores_its_closure_records_the_gradient_in_place(tmp_path: Path, passing: str) -> None:
    model = small_model()
    opt = ClosureIgnoringSGD(model.parameters(), lr=0.1)
    data = batches(12)
    in_place: list[list[float]] = []
    calls: list[int] = []

    def closure() -> torch.Tensor:  # would compute another batch's gradient, were it called
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(data[-1][0]), data[-1][1])
        loss.backward()
        return loss

    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for x, y in data[:6]:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            in_place.append(sumsq(model))
            PASSING[passing](opt, closure)
    assert calls == []
    assert_consumed(read_stream(tmp_path / "run.h5", 0), names(model), np.array(in_place))


def test_watch_lbfgs_records_the_first_closure_evaluation_once_per_step(tmp_path: Path) -> None:
    model = small_model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    first: list[list[float]] = []
    calls: list[int] = []
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for x, y in batches(5):
            calls.append(0)

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                if calls[-1] == 0:
                    first.append(sumsq(model))
                calls[-1] += 1
                return loss

            opt.step(closure)
    assert calls == [3] * 5
    assert_consumed(read_stream(tmp_path / "run.h5", 0), names(model), np.array(first))
