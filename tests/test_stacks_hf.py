"""gfprobe under the Hugging Face stacks: ``Trainer`` and a hand-written ``accelerate`` loop.

Both stacks wrap the user's optimizer (accelerate's ``AcceleratedOptimizer``), accumulate
gradients over micro-batches and clip before stepping, so "the gradient the optimizer consumes"
is easy to get wrong: a recorder reading at every ``backward()``, before clipping, or on the
wrapper as well as the inner optimizer would all record something else. The training scripts
contain no gfprobe code; their optimizer is a from-scratch ``SpyOptimizer`` whose ``step()``
snapshots Σg² of every gradient before updating, an independent witness of what was consumed.
Each stack is run once plainly and once under ``gfprobe record`` (module-scoped fixtures), and
every test compares the run file against the witness at every step and every parameter.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SCRIPTS, child_env, record

from gfprobe.store.reader import StreamData, open_run

# Every test here needs two ~10 s training subprocesses (importing transformers dominates).
pytestmark = pytest.mark.slow

HF_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
          "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
TRAINER, ACCELERATE = "train_hf_trainer.py", "train_accelerate.py"
STEPS = 8  # optimizer steps in both scripts (16 micro-batches: gradient accumulation of 2)
RTOL = 1e-6
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ scales by max_norm / (total_norm + 1e-6)


@dataclass
class StackRun:
    """One script run plainly and under ``gfprobe record``, with what each produced."""

    plain: subprocess.CompletedProcess[str]
    recorded: subprocess.CompletedProcess[str]
    n_streams: int
    stream: StreamData
    witness: dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------
def run_stack(script: str, folder: Path) -> StackRun:
    """Run ``script`` without and with gfprobe (concurrently: each child uses one thread, and the
    two runs share nothing but the code); read the run file and the script's snapshots."""
    env = child_env(**HF_ENV)
    command = [sys.executable, str(SCRIPTS / script)]
    stdout, stderr = folder / "plain.out", folder / "plain.err"  # files: a full pipe would block it
    with stdout.open("w") as o, stderr.open("w") as e, subprocess.Popen(command, stdout=o, stderr=e, env=env,
                                                                        cwd=folder) as proc:
        out, witness_path = folder / "run.h5", folder / "witness.pt"
        recorded = record(out, script, "--save", str(witness_path), cwd=folder, env=env)
        proc.wait(timeout=240)
    plain = subprocess.CompletedProcess(command, proc.returncode, stdout.read_text(), stderr.read_text())
    assert plain.returncode == 0, plain.stderr
    assert recorded.returncode == 0, recorded.stderr
    with open_run(out) as run:
        n_streams, stream = run.n_streams, run.stream(0)
    witness: dict[str, Any] = torch.load(witness_path)
    return StackRun(plain, recorded, n_streams, stream, witness)


def checksum_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("weights-checksum ")]
    assert len(lines) == 1, stdout
    return lines[0]


def witness_columns(stream: StreamData, witness: dict[str, Any]) -> list[int]:
    """For each recorded parameter, its column in the witness; the mapping must be one to one
    and cover every parameter the optimizer updates (names are the model's own, unprefixed)."""
    recorded, expected = list(stream.params.names), list(witness["names"])
    assert len(set(recorded)) == len(recorded), recorded
    assert sorted(recorded) == sorted(expected), (
        f"only in run file: {sorted(set(recorded) - set(expected))}; "
        f"only in optimizer: {sorted(set(expected) - set(recorded))}")
    return [expected.index(name) for name in recorded]


def expected_sumsq(stream: StreamData, witness: dict[str, Any]) -> np.ndarray:
    """The witness's Σg² as [steps, params], columns in the run file's order."""
    sumsq: np.ndarray = witness["sumsq"].numpy()[:, witness_columns(stream, witness)]
    return sumsq


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)))


def recorded_total_norms(stream: StreamData) -> np.ndarray:
    """sqrt of Σg² over every parameter, per recorded step: the global norm clipping sees."""
    norms: np.ndarray = np.sqrt(stream.stats["sumsq"].sum(axis=1))
    return norms


def clipped(pre_clip: np.ndarray, max_norm: float) -> np.ndarray:
    """The global norm after ``clip_grad_norm_(max_norm)`` given the norm before it."""
    result: np.ndarray = pre_clip * np.minimum(1.0, max_norm / (pre_clip + CLIP_EPS))
    return result


def assert_records_consumed(run: StackRun) -> None:
    """One stream, one record per real optimizer step, and Σg² equal to the witness everywhere."""
    assert run.n_streams == 1, "the accelerate wrapper and the inner optimizer were both recorded"
    sumsq = run.witness["sumsq"]
    assert sumsq.shape[0] == STEPS, f"the optimizer stepped {sumsq.shape[0]} times"
    np.testing.assert_array_equal(run.stream.steps, np.arange(STEPS))
    expected = expected_sumsq(run.stream, run.witness)
    assert not np.isnan(expected).any(), "a parameter had no gradient: the test would not cover it"
    assert (run.stream.stats["has_grad"] == 1).all()
    np.testing.assert_allclose(run.stream.stats["sumsq"], expected, rtol=RTOL)


def assert_clipping_exercised(pre_clip: np.ndarray, max_norm: float) -> None:
    """Both regimes occur, so the norm checks can tell pre-clip, post-clip and max_norm apart."""
    assert (pre_clip > 1.01 * max_norm).any(), f"no step was clipped: {pre_clip}"
    assert (pre_clip < 0.99 * max_norm).any(), f"every step was clipped: {pre_clip}"


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRun]:
    yield run_stack(TRAINER, tmp_path_factory.mktemp("trainer"))


@pytest.fixture(scope="module")
def accelerate_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRun]:
    yield run_stack(ACCELERATE, tmp_path_factory.mktemp("accelerate"))


# -- Trainer ---------------------------------------------------------------------------------
def test_trainer_never_harms_training(trainer_run: StackRun) -> None:
    """Exit 0 and bit-identical final weights with and without gfprobe (dropout included, so
    gfprobe must not draw from the global RNG either)."""
    assert checksum_line(trainer_run.recorded.stdout) == checksum_line(trainer_run.plain.stdout)
    assert f"optimizer steps={STEPS} global_step={STEPS}" in trainer_run.recorded.stdout
    assert f"gfprobe: recorded {STEPS} steps" in trainer_run.recorded.stderr, trainer_run.recorded.stderr


def test_trainer_records_the_consumed_gradient_at_every_step(trainer_run: StackRun) -> None:
    """After accumulation over 2 micro-batches and the Trainer's clipping, per parameter."""
    assert_records_consumed(trainer_run)


def test_trainer_grad_norm_is_the_pre_clip_norm(trainer_run: StackRun) -> None:
    """What HF's logged ``grad_norm`` means, checked against the recorded consumed gradient.

    Found (transformers 5.24): ``Trainer`` logs the value ``accelerator.clip_grad_norm_``
    returns, i.e. the global L2 norm BEFORE clipping; the optimizer consumes the clipped
    gradient. So the recorded total norm equals ``grad_norm`` where ``grad_norm <= max_grad_norm``
    and ``max_grad_norm`` (times ``grad_norm / (grad_norm + 1e-6)``) where it is larger.
    """
    logged: dict[int, float] = trainer_run.witness["grad_norms"]
    max_norm = float(trainer_run.witness["max_grad_norm"])
    assert sorted(logged) == list(range(STEPS)), "logging_steps=1 logs grad_norm at every optimizer step"
    pre_clip = np.array([logged[step] for step in range(STEPS)])
    assert_clipping_exercised(pre_clip, max_norm)
    recorded = recorded_total_norms(trainer_run.stream)
    np.testing.assert_allclose(recorded, clipped(pre_clip, max_norm), rtol=1e-5)
    over = pre_clip > 1.01 * max_norm
    assert not np.allclose(recorded[over], pre_clip[over], rtol=1e-3), "recorded the pre-clip gradient"


# -- accelerate ------------------------------------------------------------------------------
def test_accelerate_never_harms_training(accelerate_run: StackRun) -> None:
    """Exit 0 and bit-identical final weights with and without gfprobe."""
    assert checksum_line(accelerate_run.recorded.stdout) == checksum_line(accelerate_run.plain.stdout)
    assert f"optimizer steps={STEPS} clips={STEPS}" in accelerate_run.recorded.stdout
    assert f"gfprobe: recorded {STEPS} steps" in accelerate_run.recorded.stderr, accelerate_run.recorded.stderr


def test_accelerate_records_the_consumed_gradient_at_every_step(accelerate_run: StackRun) -> None:
    """Only on ``sync_gradients`` micro-batches (AcceleratedOptimizer skips the others), after
    ``accelerator.clip_grad_norm_``."""
    assert_records_consumed(accelerate_run)


def test_accelerate_records_after_clipping(accelerate_run: StackRun) -> None:
    """The recorded total norm is the clipped norm, not the one ``clip_grad_norm_`` returned."""
    pre_clip = np.array(accelerate_run.witness["grad_norms"])
    max_norm = float(accelerate_run.witness["max_grad_norm"])
    assert len(pre_clip) == STEPS
    assert_clipping_exercised(pre_clip, max_norm)
    np.testing.assert_allclose(recorded_total_norms(accelerate_run.stream), clipped(pre_clip, max_norm), rtol=1e-5)


def test_reported_agreement(trainer_run: StackRun, accelerate_run: StackRun, capsys: pytest.CaptureFixture[str]
                            ) -> None:
    """Both stacks agree to float32 summation accuracy; printed for the record (``-s``)."""
    errors = {name: max_relative_error(run.stream.stats["sumsq"], expected_sumsq(run.stream, run.witness))
              for name, run in (("trainer", trainer_run), ("accelerate", accelerate_run))}
    with capsys.disabled():
        print(" ".join(f"{name} max rel err {err:.2e}" for name, err in errors.items()))
    assert all(err <= RTOL for err in errors.values()), errors
