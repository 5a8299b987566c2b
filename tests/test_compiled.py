"""gfprobe inside ``torch.compile``: no graph break, no recompile, no warning, every step recorded.

Counted with Dynamo's own counters: graph breaks (``counters["graph_break"]``) and frame
conversions (``counters["frames"]["total"]``: every compile and every recompile of a frame). The
statistics are compared with gradients the test captures outside the compiled code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import gfprobe
from gfprobe.store.reader import open_run

STEPS = 6


@dataclass
class Compiled:
    graph_breaks: int
    frames: int  # frames Dynamo converted: compiles and recompiles
    warnings: list[str]
    stderr: str
    expected: list[list[float]] = field(default_factory=list)  # Σg² per parameter, per step
    weights: list[torch.Tensor] = field(default_factory=list)  # after the last step


def make(optimizer: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.register_parameter("unused", nn.Parameter(torch.zeros(3)))  # never gets a gradient
    if optimizer == "adam":
        return model, torch.optim.Adam(model.parameters(), lr=0.01)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def sumsq(grads: list[torch.Tensor | None]) -> list[float]:
    return [0.0 if g is None else float((g.double() ** 2).sum()) for g in grads]


def eager_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor | None]:
    """The gradient a step at the current weights consumes, computed on detached copies."""
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    loss = nn.functional.mse_loss(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return list(grads)


@contextlib.contextmanager
def dynamo_watch() -> Iterator[Compiled]:
    """Fresh Dynamo state; counters, warnings and torch's log output while the block runs."""
    torch._dynamo.reset()
    counters.clear()
    result = Compiled(0, 0, [], "")
    stderr = io.StringIO()
    handler = logging.StreamHandler(stderr)
    logging.getLogger("torch").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
            warnings.simplefilter("always")
            yield result
    finally:
        logging.getLogger("torch").removeHandler(handler)
    result.graph_breaks = sum(counters["graph_break"].values())
    result.frames = counters["frames"]["total"]
    result.warnings = [str(w.message) for w in caught]
    result.stderr = stderr.getvalue()


def compiled_optimizer_step(optimizer: str, out: Path | None, backend: str = "aot_eager") -> Compiled:
    """PyTorch's "compiling the optimizer" recipe: backward eagerly, ``opt.step()`` compiled."""
    model, opt = make(optimizer)
    x, y = torch.randn(32, 8), torch.randn(32, 4)

    @torch.compile(backend=backend)
    def step() -> None:
        opt.step()

    with dynamo_watch() as result, _maybe_watch(model, opt, out):
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            result.expected.append(sumsq([p.grad for p in model.parameters()]))
            step()
    result.weights = [p.detach().clone() for p in model.parameters()]
    return result


def compiled_training_step(optimizer: str, out: Path | None) -> Compiled:
    """Forward, backward, step and zero_grad in one compiled function."""
    model, opt = make(optimizer)
    x, y = torch.randn(32, 8), torch.randn(32, 4)

    @torch.compile(backend="aot_eager")
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    with dynamo_watch() as result, _maybe_watch(model, opt, out):
        for _ in range(STEPS):
            result.expected.append(sumsq(eager_gradients(model, x, y)))
            train_step(x, y)
    result.weights = [p.detach().clone() for p in model.parameters()]
    return result


def _maybe_watch(model: nn.Module, opt: torch.optim.Optimizer,
                 out: Path | None) -> contextlib.AbstractContextManager[object]:
    return gfprobe.watch(model, opt, out=out) if out is not None else contextlib.nullcontext()


def log_messages(text: str) -> set[str]:
    """torch's log lines without their time stamp and process id prefix."""
    return {line.split("] ", 1)[-1] for line in text.splitlines() if line.strip()}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("run", [compiled_optimizer_step, compiled_training_step],
                         ids=["compiled-optimizer-step", "compiled-training-step"])
def test_compiled_code_is_unchanged_and_every_step_is_recorded(
        tmp_path: Path, optimizer: str, run: Callable[[str, Path | None], Compiled]) -> None:
    plain = run(optimizer, None)
    watched = run(optimizer, tmp_path / "run.h5")

    assert (watched.graph_breaks, watched.frames) == (plain.graph_breaks, plain.frames)
    assert all(torch.equal(a, b) for a, b in zip(watched.weights, plain.weights, strict=True))
    # Nothing new from torch or Python: torch warns some things once per process, so the second
    # run may print less than the first, never more.
    assert set(watched.warnings) <= set(plain.warnings)
    assert log_messages(watched.stderr) <= log_messages(plain.stderr)
    assert "gfprobe" not in watched.stderr
    with open_run(tmp_path / "run.h5") as run_file:
        stream = run_file.stream(0)
    assert stream.steps.tolist() == list(range(STEPS))
    unused = stream.params.names.index("unused")
    assert stream.stats["has_grad"][:, unused].tolist() == [0] * STEPS  # a None gradient inside compiled code
    np.testing.assert_allclose(stream.stats["sumsq"], np.array(watched.expected), rtol=1e-5, atol=1e-12)


@pytest.mark.slow
def test_inductor_compiled_optimizer_step_is_unchanged_and_recorded(tmp_path: Path) -> None:
    """The default backend generates and compiles C++ for the step; the op stays an extern call."""
    plain = compiled_optimizer_step("adam", None, backend="inductor")
    watched = compiled_optimizer_step("adam", tmp_path / "run.h5", backend="inductor")
    assert (watched.graph_breaks, watched.frames) == (plain.graph_breaks, plain.frames)
    assert all(torch.equal(a, b) for a, b in zip(watched.weights, plain.weights, strict=True))
    with open_run(tmp_path / "run.h5") as run_file:
        stream = run_file.stream(0)
    assert stream.steps.tolist() == list(range(STEPS))
    np.testing.assert_allclose(stream.stats["sumsq"], np.array(watched.expected), rtol=1e-5, atol=1e-12)


@pytest.mark.slow
def test_a_probe_opened_and_closed_again_costs_no_recompile(tmp_path: Path) -> None:
    """The hook stays registered after a probe closes (inert), so neither unrecorded steps nor a
    new probe change what Dynamo guards on."""
    model, opt = make("adam")
    x, y = torch.randn(32, 8), torch.randn(32, 4)

    @torch.compile(backend="aot_eager")
    def step() -> None:
        opt.step()

    def train(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            step()

    with dynamo_watch() as result:
        with gfprobe.watch(model, opt, out=tmp_path / "a.h5"):
            train(3)
        frames_after_first = counters["frames"]["total"]
        train(2)  # unrecorded
        with gfprobe.watch(model, opt, out=tmp_path / "b.h5"):
            train(3)
    assert result.frames == frames_after_first  # the first probe's compiled code serves throughout
    for name in ("a.h5", "b.h5"):
        with open_run(tmp_path / name) as run_file:
            assert run_file.stream(0).steps.tolist() == [0, 1, 2]
