"""gfprobe-lightning with real Lightning on CPU: no mocks.

* ``gfprobe record`` on a Lightning script with no gfprobe code and no ``--metric``: the run's
  metrics are what Lightning's own ``CSVLogger`` wrote in the same run, its attributes the
  ``hparams.yaml`` it wrote; a plain run of the script gives the same output, CSV and weights.
  Once with ``lightning.pytorch`` and once with the standalone ``pytorch_lightning``.
* The explicit ``GfprobeCallback`` under ``gfprobe.watch``, with ``ModelPruning``: its masks are
  the run's, step by step; ``GfprobeCallback(out=...)`` recording by itself.
* Values gfprobe cannot record do not disturb training.

Importing Lightning takes seconds, so each recorded run serves several tests.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from gfprobe_lightning import GfprobeCallback, recording_active
from gfprobe_lightning._attach import add_callback_to_every_trainer
from lightning.pytorch.callbacks import ModelPruning
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gfprobe
from gfprobe.store.reader import Metric, open_run

SCRIPT = Path(__file__).parent / "scripts" / "train_lit_classifier.py"
STEPS_PER_EPOCH, EPOCHS = 5, 3  # the script's, and the in-process fits'
STEPS = STEPS_PER_EPOCH * EPOCHS
Series = dict[str, list[tuple[int, float]]]


# -- helpers ---------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
    for name in ("GFPROBE_RECORD", "GFPROBE_DISABLE_PLUGINS"):
        env.pop(name, None)
    return env


def csv_series(path: Path) -> Series:
    """Every value of Lightning's metrics.csv by name, as (Lightning's logger step, value)."""
    series: Series = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for name, cell in row.items():
                if name not in ("epoch", "step") and cell != "":
                    series.setdefault(name, []).append((int(row["step"]), float(cell)))
    return series


def as_gfprobe_steps(series: Series) -> Series:
    """The same values at the optimizer steps taken when Lightning logged them (gfprobe's step).

    During fit Lightning logs at the index of the last optimizer step taken (its
    ``_batches_that_stepped`` before the increment), i.e. one less than the steps taken; after
    fit (``trainer.test``) at the number of steps taken itself.
    """
    return {name: [(step if name.startswith("test_") else step + 1, value) for step, value in rows]
            for name, rows in series.items()}


def run_series(metrics: dict[str, Metric]) -> Series:
    return {name: list(zip(m.steps.tolist(), m.values.tolist(), strict=True)) for name, m in metrics.items()}


def json_plain(value: Any) -> Any:
    """Tuples as lists, as a run file's JSON attributes read back."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class Run:
    """One process of the script: its result, its CSVLogger folder, its run file (if recorded)."""

    proc: subprocess.CompletedProcess[str]
    logs: Path
    run_file: Path
    weights: Path


def start(tmp: Path, name: str, *, package: str = "lightning.pytorch", recorded: bool = True
          ) -> tuple[subprocess.Popen[str], Run]:
    script = [sys.executable, str(SCRIPT), "--logs", str(tmp / name), "--package", package,
              "--save", str(tmp / f"{name}.pt")]
    command = [sys.executable, "-m", "gfprobe", "record", "--out", str(tmp / f"{name}.h5"), "--", *script]
    proc = subprocess.Popen(command if recorded else script, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    placeholder = subprocess.CompletedProcess(proc.args, -1, "", "")
    return proc, Run(placeholder, tmp / name, tmp / f"{name}.h5", tmp / f"{name}.pt")


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The script plainly, recorded with lightning.pytorch, recorded with pytorch_lightning: side by side."""
    tmp = tmp_path_factory.mktemp("script")
    started = {"plain": start(tmp, "plain", recorded=False), "recorded": start(tmp, "recorded"),
               "standalone": start(tmp, "standalone", package="pytorch_lightning")}
    runs: dict[str, Run] = {}
    try:
        for name, (proc, run) in started.items():
            out, err = proc.communicate(timeout=240)
            runs[name] = Run(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run.logs,
                             run.run_file, run.weights)
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, run in runs.items():
        assert run.proc.returncode == 0, f"{name}: {run.proc.stderr}"
    return runs


# -- gfprobe record, no code change ----------------------------------------------------------
@pytest.mark.parametrize("name", ["recorded", "standalone"])
def test_record_gets_exactly_what_lightning_logged(script_runs: dict[str, Run], name: str) -> None:
    run = script_runs[name]
    expected = as_gfprobe_steps(csv_series(run.logs / "metrics.csv"))
    with open_run(run.run_file) as f:
        recorded = run_series(f.metrics())
    assert set(expected) == {"train_loss_step", "train_loss_epoch", "train_acc", "val_loss", "val_acc", "test_acc"}
    assert recorded == expected


def test_record_steps_are_optimizer_steps_taken(script_runs: dict[str, Run]) -> None:
    """Independently of the CSV: step values every 2 steps (log_every_n_steps=2), epoch-end,
    validation and test values after each epoch's last step."""
    with open_run(script_runs["recorded"].run_file) as f:
        metrics = f.metrics()
        stream = f.stream(0)
    epoch_ends = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert metrics["train_loss_step"].steps.tolist() == list(range(2, STEPS, 2))
    assert metrics["train_acc"].steps.tolist() == list(range(2, STEPS, 2))
    for name in ("train_loss_epoch", "val_loss", "val_acc"):
        assert metrics[name].steps.tolist() == epoch_ends, name
    assert metrics["test_acc"].steps.tolist() == [STEPS]
    assert stream.steps.tolist() == list(range(STEPS)), "gradients are still recorded, once per step"


@pytest.mark.parametrize("name", ["recorded", "standalone"])
def test_record_stores_the_hyperparameters_and_completes(script_runs: dict[str, Run], name: str) -> None:
    run = script_runs[name]
    hparams = yaml.full_load((run.logs / "hparams.yaml").read_text())
    assert hparams == {"hidden": 16, "lr": 0.2, "arch": "mlp", "widths": (8, 16, 2),  # the module's
                       "batch_size": 8, "n_train": 40, "seed": 1}  # and the datamodule's
    with open_run(run.run_file) as f:
        assert f.attrs == json_plain(hparams)
        assert f.metadata["status"] == "complete"


def test_record_leaves_the_script_unchanged(script_runs: dict[str, Run]) -> None:
    plain, recorded = script_runs["plain"], script_runs["recorded"]
    assert recorded.proc.stdout == plain.proc.stdout
    assert plain.proc.stdout.startswith(f"steps {STEPS} weights ")
    assert (recorded.logs / "metrics.csv").read_bytes() == (plain.logs / "metrics.csv").read_bytes()
    a, b = torch.load(recorded.weights), torch.load(plain.weights)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- in-process Lightning ------------------------------------------------------------------------
class Net(pl.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def loaders() -> tuple[DataLoader[tuple[torch.Tensor, ...]], DataLoader[tuple[torch.Tensor, ...]]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8 * STEPS_PER_EPOCH + 16, 8, generator=gen)
    y = (x.sum(1) > 0).long()
    n = 8 * STEPS_PER_EPOCH
    return (DataLoader(TensorDataset(x[:n], y[:n]), batch_size=8),
            DataLoader(TensorDataset(x[n:], y[n:]), batch_size=8))


def make_trainer(callbacks: list[pl.Callback], logger: Any = False) -> pl.Trainer:
    return pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, log_every_n_steps=1, logger=logger,
                      callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0)


def fit(model: pl.LightningModule, callbacks: list[pl.Callback], logger: Any = False) -> pl.Trainer:
    trainer = make_trainer(callbacks, logger)
    torch.manual_seed(0)
    trainer.fit(model, *loaders())
    return trainer


def new_net() -> Net:
    torch.manual_seed(0)
    return Net()


class MaskWitness(pl.Callback):
    """The nonzero count of every Linear weight's prune mask (its size while it has none), just
    before each optimizer step: what gfprobe should record as that step's active count."""

    def __init__(self) -> None:
        self.counts: list[dict[str, int]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        row = {}
        for name, module in pl_module.named_modules():
            if isinstance(module, nn.Linear):
                mask = getattr(module, "weight_mask", None)
                row[f"{name}.weight"] = int(torch.count_nonzero(mask)) if mask is not None else module.weight.numel()
        self.counts.append(row)


@dataclass(frozen=True)
class Watched:
    run_file: Path
    logs: Path
    witness: MaskWitness


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """The explicit callback under gfprobe.watch, with ModelPruning (30% more of each weight
    after every epoch) and a CSVLogger."""
    tmp = tmp_path_factory.mktemp("watched")
    witness = MaskWitness()
    pruning = ModelPruning("l1_unstructured", amount=0.3, parameter_names=["weight"],
                           use_lottery_ticket_hypothesis=False, verbose=0)
    model = new_net()
    with gfprobe.watch(model, out=tmp / "run.h5"):
        fit(model, [pruning, witness, GfprobeCallback()], logger=CSVLogger(tmp, name="", version=""))
    return Watched(tmp / "run.h5", tmp, witness)


def test_watch_with_callback_records_what_lightning_logged(watched: Watched) -> None:
    expected = as_gfprobe_steps(csv_series(watched.logs / "metrics.csv"))
    with open_run(watched.run_file) as f:
        assert run_series(f.metrics()) == expected
        assert f.attrs == {"hidden": 16, "lr": 0.2}
    assert set(expected) == {"train_loss_step", "train_loss_epoch", "val_acc"}
    assert [s for s, _ in expected["train_loss_step"]] == list(range(1, STEPS + 1))


def test_model_pruning_masks_are_the_runs(watched: Watched) -> None:
    """ModelPruning prunes after gfprobe first sees the optimizer: its masks are still the run's,
    and each recorded active count is the mask's nonzero count at that step."""
    counts = watched.witness.counts
    assert len(counts) == STEPS
    with open_run(watched.run_file) as f:
        stream = f.stream(0)
    params = stream.params
    assert dict(zip(params.names, params.mask_sources, strict=True)) == {
        "net.0.weight": "prune", "net.0.bias": "none", "net.2.weight": "prune", "net.2.bias": "none"}
    assert stream.steps.tolist() == list(range(STEPS))
    for name in ("net.0.weight", "net.2.weight"):
        column = params.names.index(name)
        witnessed = [row[name] for row in counts]
        assert len(set(witnessed)) == EPOCHS, f"{name}: pruned after each epoch but the last"
        assert stream.stats["active"][:, column].tolist() == witnessed, name


def test_callback_with_out_records_by_itself(tmp_path: Path) -> None:
    model = new_net()
    fit(model, [GfprobeCallback(out=tmp_path / "own.h5")])
    assert not recording_active(), "closed at fit end"
    with open_run(tmp_path / "own.h5") as f:
        metrics = f.metrics()
        assert f.metadata["status"] == "complete"
        assert f.attrs == {"hidden": 16, "lr": 0.2}
        assert f.stream(0).steps.tolist() == list(range(STEPS))
    assert metrics["train_loss_step"].steps.tolist() == list(range(1, STEPS + 1))
    assert metrics["val_acc"].steps.tolist() == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]


class Crashing(Net):
    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == 7:
            raise RuntimeError("diverged")
        return super().training_step(batch, batch_idx)


def test_callback_with_out_marks_a_crashed_fit_failed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Crashing()
    trainer = make_trainer([GfprobeCallback(out=tmp_path / "own.h5")])
    with pytest.raises(RuntimeError, match="diverged"):
        trainer.fit(model, *loaders())
    assert not recording_active()
    assert "log_metrics" not in vars(trainer._logger_connector), "Lightning's own method again"
    with open_run(tmp_path / "own.h5") as f:
        assert f.metadata["status"] == "failed"
        assert f.stream(0).steps.tolist() == list(range(7))
        assert f.metrics()["train_loss_step"].steps.tolist() == list(range(1, 8))


def test_callback_with_out_leaves_an_active_recording_alone(tmp_path: Path) -> None:
    model = new_net()
    with gfprobe.watch(model, out=tmp_path / "outer.h5"):
        fit(model, [GfprobeCallback(out=tmp_path / "inner.h5")])
    assert not (tmp_path / "inner.h5").exists()
    with open_run(tmp_path / "outer.h5") as f:
        assert len(f.metrics()["train_loss_step"].steps) == STEPS


class ThirdPartyLogging(pl.Callback):
    """Logs through the trainer's logger connector, as Lightning's ThroughputMonitor does, values
    no logger could take: text, a vector, a tensor on the meta device (no data to read)."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        values: dict[str, Any] = {"note": "warming up", "vector": torch.ones(3),
                                  "meta": torch.tensor(1.0, device="meta"),
                                  "ok": torch.tensor(float(trainer.global_step) / 2)}
        trainer._logger_connector.log_metrics(values)


def test_values_gfprobe_cannot_record_do_not_disturb_training(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    plain = new_net()
    fit(plain, [ThirdPartyLogging()])
    model = new_net()
    with caplog.at_level(logging.WARNING, logger="gfprobe"), gfprobe.watch(model, out=tmp_path / "run.h5"):
        trainer = fit(model, [ThirdPartyLogging(), GfprobeCallback()])
    assert trainer.global_step == STEPS
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(),
                                                 strict=True))
    warnings = [r.getMessage() for r in caplog.records if "not a single number" in r.getMessage()]
    assert len(warnings) == 3, "one warning per value, not per step"
    assert all(any(f"'{name}'" in w for w in warnings) for name in ("note", "vector", "meta"))
    with open_run(tmp_path / "run.h5") as f:
        metrics = f.metrics()
        assert f.metadata["status"] == "complete"
    assert set(metrics) == {"ok", "train_loss_step", "train_loss_epoch", "val_acc"}
    np.testing.assert_array_equal(metrics["ok"].values, metrics["ok"].steps / 2)


# -- attaching -------------------------------------------------------------------------------------
@pytest.fixture
def patched_trainer() -> Iterator[None]:
    original = pl.Trainer.__init__
    add_callback_to_every_trainer(pl)
    add_callback_to_every_trainer(pl)  # twice: still one wrapper
    try:
        yield
    finally:
        pl.Trainer.__init__ = original  # type: ignore[method-assign]


@pytest.mark.usefixtures("patched_trainer")
def test_every_trainer_gets_one_callback_before_the_checkpoints() -> None:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    kinds = [type(c).__name__ for c in trainer.callbacks]  # type: ignore[attr-defined]
    assert kinds == ["GfprobeCallback", "ModelCheckpoint"]
    own = GfprobeCallback()
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, callbacks=[own])
    assert [c for c in trainer.callbacks if isinstance(c, GfprobeCallback)] == [own]  # type: ignore[attr-defined]


def test_plugin_module_imports_neither_lightning_nor_torch() -> None:
    code = ("import sys, gfprobe_lightning.plugin, gfprobe_lightning; "
            "print([m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_is_installed_with_its_hooks() -> None:
    from gfprobe.plugin.manager import installed

    info = next(p for p in installed() if p.name == "lightning")
    assert (info.distribution, info.error) == ("gfprobe-lightning", None)
    assert info.hooks == ("gfprobe_record_started",)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every": 0}, "every=0"),
    ({"masks": "sparse"}, "masks=.*'sparse'"),
    ({"out": 3}, r"out=\.\.\.\) is the run file"),
], ids=["every", "masks", "out"])
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(gfprobe.GfprobeError, match=match):
        GfprobeCallback(**kwargs)
