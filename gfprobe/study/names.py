"""The names a study may use, with their allowed values: one place for validation and help."""

from __future__ import annotations

import math
from dataclasses import dataclass

ARCHS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam", "rmsprop", "adamw")
ACTIVATIONS = ("relu", "prelu", "elu", "swish", "srelu", "sigmoid")
# Regularisation and normalisation, and the combinations SCIENCE.md §4 lists: none (NR), weight
# decay (L2), data augmentation (DA), skip connections (SC), BatchNorm (BN).
REGULARISATIONS = ("NR", "L2", "DA", "SC", "BN", "DA_BN", "L2_BN", "SC_BN", "DA_SC_BN", "DA_L2_SC_BN")
REGULARISERS = ("DA", "L2", "SC", "BN")
INITS = ("dense", "sparsity-aware")


def regularisers(name: str) -> frozenset[str]:
    """The switches a regularisation name turns on: ``"DA_BN"`` -> {"DA", "BN"}, ``"NR"`` -> {}."""
    return frozenset() if name == "NR" else frozenset(name.split("_"))


@dataclass(frozen=True)
class DatasetInfo:
    """What the models need to know about a data set."""

    name: str
    shape: tuple[int, ...]  # one example: (channels, length) or (channels, height, width)
    classes: int

    @property
    def features(self) -> int:
        return math.prod(self.shape)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist1d", (1, 40), 10),
        DatasetInfo("digits", (1, 8, 8), 10),
        DatasetInfo("fashion-mnist", (1, 28, 28), 10),
        DatasetInfo("cifar10", (3, 32, 32), 10),
        DatasetInfo("cifar100", (3, 32, 32), 100),
    )
}
