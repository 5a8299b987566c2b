"""How many examples a study's data sets have, and how they are split: train, test, and the probe
batch held out of training. Imports no torch, so study files are checked without it.

MNIST-1D is generated and the digits are bundled: a study chooses their size (``samples``) and
test share (``test_fraction``). Fashion-MNIST and CIFAR come as fixed train and test files, whose
sizes are what they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """The sizes a study may ask of a generated or bundled data set."""

    default: int  # examples (train + test) when a study does not say
    most: int  # the most there are (bundled) or that gfprobe generates
    multiple: int = 1  # the generator makes samples / multiple examples of each class
    test_fraction: float = 0.2  # the data set's own test share
    least_per_split: int = 1  # examples each split needs (a stratified split: one per class)


SIZES: dict[str, Size] = {
    # The mnist1d package's defaults: 5,000 signals (500 per class), 4,000 / 1,000. Above a million
    # the generator (pure Python, ~3 s per 10,000) would run for hours.
    "mnist1d": Size(5000, 1_000_000, multiple=10),
    # scikit-learn's 1,797 digits, split 80/20 stratified: every class on both sides.
    "digits": Size(1797, 1797, least_per_split=10),
}


def split_sizes(samples: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) examples: the test split gets ⌈test_fraction · samples⌉, scikit-learn's rule
    (so 1,797 digits at 0.2 give 1,437 / 360, and 5,000 signals 4,000 / 1,000, as before)."""
    n_test = math.ceil(test_fraction * samples)
    return samples - n_test, n_test
