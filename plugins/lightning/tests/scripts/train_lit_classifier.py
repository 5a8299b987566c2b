"""A small Lightning classifier with no gfprobe code in it, logging the way Lightning users do.

``self.log`` in training (``train_loss`` on step and on epoch, ``train_acc`` on step), validation
(``val_loss``, ``val_acc``) and test (``test_acc``); ``save_hyperparameters()`` in the module and
in the datamodule; Lightning's own ``CSVLogger`` writing ``metrics.csv`` and ``hparams.yaml`` into
``--logs``; ``log_every_n_steps=2``. 40 training samples in batches of 8: 5 optimizer steps per
epoch, 3 epochs, then one test::

    train_lit_classifier.py --logs DIR [--package pytorch_lightning] [--save weights.pt]

Prints the number of optimizer steps and a SHA-256 of the final weights, so that comparing stdout
with and without a recorder compares the trained weights bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

STEPS_PER_EPOCH = 5
EPOCHS = 3


def build(pl: Any) -> tuple[type, type]:
    """The module and datamodule classes for one Lightning package."""

    class Classifier(pl.LightningModule):  # type: ignore[misc]
        def __init__(self, hidden: int = 16, lr: float = 0.2, arch: str = "mlp", widths: tuple[int, ...] = (8, 16, 2)
                     ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

        def _step(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = batch
            logits = self.net(x)
            return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss, acc = self._step(batch)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.log("train_acc", acc)
            return loss

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            loss, acc = self._step(batch)
            self.log("val_loss", loss)
            self.log("val_acc", acc, prog_bar=True)

        def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            self.log("test_acc", self._step(batch)[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Data(pl.LightningDataModule):  # type: ignore[misc]
        def __init__(self, batch_size: int = 8, n_train: int = 8 * STEPS_PER_EPOCH, seed: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters()
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(n_train + 32, 8, generator=gen)
            y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
            val, test = slice(n_train, n_train + 16), slice(n_train + 16, None)
            self.splits = {"train": (x[:n_train], y[:n_train]), "val": (x[val], y[val]), "test": (x[test], y[test])}

        def _loader(self, split: str) -> DataLoader[tuple[torch.Tensor, ...]]:
            return DataLoader(TensorDataset(*self.splits[split]), batch_size=self.hparams.batch_size)

        def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
            return self._loader("train")

        def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
            return self._loader("val")

        def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
            return self._loader("test")

    return Classifier, Data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", required=True, help="CSVLogger's folder")
    parser.add_argument("--package", default="lightning.pytorch", choices=["lightning.pytorch", "pytorch_lightning"])
    parser.add_argument("--save", default="", help="where to torch.save the final state_dict")
    args = parser.parse_args()
    pl = importlib.import_module(args.package)
    csv_logger = importlib.import_module(f"{args.package}.loggers").CSVLogger
    classifier, data = build(pl)
    torch.manual_seed(0)
    model = classifier()
    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=1, log_every_n_steps=2,
        logger=csv_logger(args.logs, name="", version=""),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    datamodule = data()
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode() + p.detach().numpy().tobytes())
    print(f"steps {trainer.global_step} weights {digest.hexdigest()}", flush=True)
    if args.save:
        torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    main()
