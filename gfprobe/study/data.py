"""The study's data sets as whole-split tensors, and the data augmentation each one gets.

``load`` is the boundary with the user's disk: before reading, it checks that the files a data set
needs are there, and it turns a missing or unreadable file into a ``DatasetMissing`` that names the
file and the fix. ``augment`` works on batches already on the training device and draws all its
randomness from the caller's generator, so a run replays exactly.

torchvision, scikit-learn and mnist1d are imported only by the loader that needs them: the rest of
gfprobe works without them.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from gfprobe.errors import ConfigError, GfprobeError
from gfprobe.study.names import DATASETS
from gfprobe.study.sizes import SIZES, split_sizes

_Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Split:
    """A data set's train and test split, inputs normalised with the training split's statistics.

    Inputs are float32 ``[N, *DATASETS[name].shape]`` with per-channel mean 0 and std 1 over the
    training split (the test split uses the same shift and scale); labels are int64 ``[N]``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class DatasetMissing(GfprobeError):
    """A data set's files are not where gfprobe looks, or a package its loader needs is not installed."""


class DatasetCorrupt(DatasetMissing):
    """A data set file is there but truncated or not in the expected format: as good as missing."""


@dataclass(frozen=True)
class _Layout:
    """Where torchvision keeps a data set under the data root: one folder and the files in it."""

    folder: str
    files: tuple[str, ...]
    torchvision_class: str


_LAYOUTS = {
    "fashion-mnist": _Layout("FashionMNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), "FashionMNIST"),
    "cifar10": _Layout("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                                               "batches.meta"), "CIFAR10"),
    "cifar100": _Layout("cifar-100-python", ("train", "test", "meta"), "CIFAR100"),
}

# Random crop from a zero-padded image (in normalised units zero is the training mean: a neutral
# fill), and whether to mirror left-right half the time.
_CROPS: dict[str, tuple[int, bool]] = {
    # The standard CIFAR recipe (He et al. 2016): 4-pixel padding, a 32x32 crop, a mirror. Objects
    # and scenes look as natural mirrored.
    "cifar10": (4, True),
    "cifar100": (4, True),
    # Garments are centred and fill most of the 28x28 frame, so a smaller shift; clothes mirrored
    # are still the same kind of clothes.
    "fashion-mnist": (2, True),
    # At 8x8 one pixel is already an eighth of the width. No mirror: a mirrored 2, 3 or 7 is not a digit.
    "digits": (1, False),
}
# MNIST-1D's own generator translates each template by up to 48 positions and adds noise
# (mnist1d.transform), so a small circular shift and a little noise keep every label; 0.05 is
# in normalised units, a twentieth of the data's std.
_MNIST1D_SHIFT = 3
_MNIST1D_NOISE = 0.05


@dataclass(frozen=True)
class ProbeBatch:
    """The probe-batch protocol's examples: training examples held out of training (normalised
    as the training split is)."""

    x: torch.Tensor
    y: torch.Tensor


# The probe batch is drawn with its own fixed seed, not a run's: every run on the same data holds
# out the same examples, so their probe gradients are taken on the same batch.
PROBE_SEED = 0


def load(name: str, root: Path | None = None, download: bool = False, samples: int | None = None,
         test_fraction: float | None = None) -> Split:
    """Load data set ``name`` as a normalised ``Split``.

    Args:
        name: One of ``DATASETS``.
        root: The folder holding torchvision's layout (fashion-mnist, cifar10, cifar100); unused by
            mnist1d and digits, which are generated or bundled.
        download: Let torchvision fetch missing files into ``root`` (needs a network).
        samples: Examples in both splits together (mnist1d: generated; digits: a stratified subset
            of the 1,797); None: the data set's own (``sizes.SIZES``). Study files are checked
            against ``sizes`` before they get here.
        test_fraction: The test split's share of them; None: the data set's own (0.2).

    Raises:
        ConfigError: ``name`` is not a known data set, or ``samples``/``test_fraction`` given for
            one of fixed train and test files.
        DatasetMissing: A file, the data root or a needed package is missing, or a file is unreadable.
    """
    _check_name(name)
    size = SIZES.get(name)
    if size is None:
        if samples is not None or test_fraction is not None:
            raise ConfigError(f"{name} comes as fixed train and test files: samples and test_fraction apply to "
                              f"{' and '.join(SIZES)} only")
        return _normalised(*_from_files(name, None if root is None else Path(root).expanduser(), download))
    n_train, n_test = split_sizes(size.default if samples is None else samples,
                                  size.test_fraction if test_fraction is None else test_fraction)
    tensors = _mnist1d(n_train, n_test) if name == "mnist1d" else _digits(n_train, n_test)
    return _normalised(*tensors)


def hold_out(split: Split, n: int) -> tuple[Split, ProbeBatch | None]:
    """``n`` training examples, chosen by ``PROBE_SEED``, taken out of ``split`` as the probe batch
    (the other training examples keep their order); ``n = 0`` leaves ``split`` as it is.

    Raises:
        ConfigError: ``n`` is not below the number of training examples.
    """
    if n <= 0:
        return split, None
    total = len(split.x_train)
    if n >= total:
        raise ConfigError(f"probe_batch = {n:,} holds out all {total:,} training examples; use fewer, "
                          f"e.g. probe_batch = {max(2, total // 10)}")
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(PROBE_SEED))[:n].sort().values
    kept = torch.ones(total, dtype=torch.bool)
    kept[chosen] = False
    chosen = chosen.to(split.x_train.device)
    kept = kept.to(split.x_train.device)
    trained = Split(split.x_train[kept], split.y_train[kept], split.x_test, split.y_test)
    return trained, ProbeBatch(split.x_train[chosen], split.y_train[chosen])


def augment(name: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A randomly augmented copy of batch ``x`` of data set ``name``; ``x`` is left as it is.

    Randomness comes only from ``generator`` (drawn on its device, then moved to ``x``'s), so the
    same generator state gives the same batch.

    Raises:
        ConfigError: ``name`` is not a known data set.
        ValueError: ``x`` is not a float batch of that data set's example shape.
    """
    info = DATASETS[_check_name(name)]
    if tuple(x.shape[1:]) != info.shape or not x.is_floating_point():
        raise ValueError(f"augment({name!r}) needs a float batch of shape [N, {', '.join(map(str, info.shape))}], "
                         f"got {x.dtype} {list(x.shape)}")
    if name == "mnist1d":
        return _shift_and_noise(x, generator)
    pad, mirror = _CROPS[name]
    return _crop_and_mirror(x, pad, mirror, generator)


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ConfigError(f"Unknown data set {name!r}: choose one of {', '.join(DATASETS)}.")
    return name


def _require(module: str, package: str, dataset: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DatasetMissing(f"The {dataset} data set needs the {package} package, which is not installed: "
                             f"pip install {package}") from err


def _normalised(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> Split:
    # copy=True: the tensors below are then ours to scale in place (CIFAR's training inputs are 600 MB).
    x_train = x_train.to(torch.float32, copy=True)
    x_test = x_test.to(torch.float32, copy=True)
    std, mean = torch.std_mean(x_train, dim=[0, *range(2, x_train.ndim)], correction=0, keepdim=True)
    # A constant channel would divide zero by zero; it stays all zeros instead.
    std = std.clamp_min(torch.finfo(torch.float32).eps)
    for x in (x_train, x_test):
        x.sub_(mean).div_(std)
    return Split(x_train, y_train.to(torch.int64), x_test, y_test.to(torch.int64))


def _mnist1d(n_train: int, n_test: int) -> _Tensors:
    # The package's own split: the first examples train, the rest test (its default is 4000/1000).
    # torch.tensor copies: the cached arrays stay as generated whatever callers do with the tensors.
    x, y = (torch.tensor(a) for a in _mnist1d_arrays(n_train + n_test))
    return x[:n_train].unsqueeze(1), y[:n_train], x[n_train:].unsqueeze(1), y[n_train:]


# Keyed by the number of signals, the one argument that changes what is generated (the split is
# taken afterwards). A few sizes, for a study that compares them in one process.
@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(samples: int) -> tuple[npt.NDArray[Any], ...]:
    """``samples`` MNIST-1D signals and labels from the package's default arguments (seed 42) but
    their number: the same examples in every run, on every machine. (More signals are not the
    default ones plus others: the generator draws each class's signals in turn.)"""
    mnist1d = _require("mnist1d.data", "mnist1d", "mnist1d")
    args = mnist1d.get_dataset_args()
    args.num_samples, args.train_split = samples, 1.0  # every signal in "x"; split by the caller
    # make_dataset reseeds Python's and NumPy's global generators; restore them so loading data
    # never changes the random stream of the caller's code.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = mnist1d.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    arrays = (np.asarray(data["x"]), np.asarray(data["y"]))
    for array in arrays:
        array.setflags(write=False)  # shared by every later call
    return arrays


def _digits(n_train: int, n_test: int) -> _Tensors:
    sklearn_datasets = _require("sklearn.datasets", "scikit-learn", "digits")
    model_selection = _require("sklearn.model_selection", "scikit-learn", "digits")
    bunch = sklearn_datasets.load_digits()
    images, target = bunch.images, bunch.target
    if n_train + n_test < len(target):
        subset = _stratified_subset(target, n_train + n_test)
        images, target = images[subset], target[subset]
    # Stratified and seeded: every run and every machine gets the same split (1437/360 of all 1,797).
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        images, target, test_size=n_test, stratify=target, random_state=0)
    return (torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(y_train),
            torch.from_numpy(x_test).unsqueeze(1), torch.from_numpy(y_test))


def _stratified_subset(labels: npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
    """The indices of ``n`` examples, each class's share as in ``labels`` (to within one), chosen
    by a fixed seed: each class's examples are put in a seeded order and ranked by how far along
    their class they come, and the ``n`` earliest are kept. A subset stays stratifiable: 20 or
    more examples give every class at least two."""
    order = np.random.RandomState(0).permutation(len(labels))
    rank = np.empty(len(labels))
    for label in np.unique(labels):
        members = order[labels[order] == label]
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.sort(np.argsort(rank, kind="stable")[:n])


def _from_files(name: str, root: Path | None, download: bool) -> _Tensors:
    layout = _LAYOUTS[name]
    if root is None:
        raise DatasetMissing(f"{name} is read from files and needs --data-root DIR: a folder holding "
                             f"{layout.folder}/, or an empty one to fill with --download.")
    folder = root.absolute() / layout.folder
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if missing and not download:
        raise DatasetMissing(_missing_message(name, folder, missing))
    datasets = _require("torchvision.datasets", "torchvision", name)
    base = getattr(datasets, layout.torchvision_class)
    reader = base if name == "fashion-mnist" else _without_md5_unless_downloading(base)
    try:
        # Only the first call downloads: it fetches both splits.
        train, test = reader(str(root), train=True, download=download), reader(str(root), train=False)
    except Exception as err:  # a damaged file can make pickle or the idx parser raise almost anything
        raise _explain(name, folder, download, err) from err
    x_train, y_train = _images(train.data), torch.as_tensor(train.targets, dtype=torch.int64)
    x_test, y_test = _images(test.data), torch.as_tensor(test.targets, dtype=torch.int64)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        _check_split(name, folder, split, x, y)
    return x_train, y_train, x_test, y_test


def _without_md5_unless_downloading(base: Any) -> Any:
    """torchvision's CIFAR reader, checking md5 sums only right after a download.

    torchvision hashes every batch file on every load: that rejects any copy that is not
    byte-for-byte the official release (re-pickled data, our test fixtures) and reads 180 MB twice.
    The hashes only tell a broken download apart, so they are checked when ``download=True``;
    otherwise the files only have to exist, and a damaged one fails to unpickle instead.
    """

    class Reader(base):  # type: ignore[misc]  # torchvision ships no type information
        def __init__(self, root: str, train: bool, download: bool = False) -> None:
            self._verify_md5 = download  # torchvision's __init__ calls _check_integrity
            if not download:
                # _load_meta checks the meta file's md5 by itself; check_integrity(path, None) only
                # checks that the file exists.
                self.meta = {**base.meta, "md5": None}
            super().__init__(root, train=train, download=download)

        def _check_integrity(self) -> bool:
            check_integrity = importlib.import_module("torchvision.datasets.utils").check_integrity
            return all(check_integrity(str(Path(self.root, self.base_folder, filename)),
                                       md5 if self._verify_md5 else None)
                       for filename, md5 in self.train_list + self.test_list)

    return Reader


def _images(data: Any) -> torch.Tensor:
    """torchvision's ``.data`` as ``[N, C, H, W]``: grey ``[N, H, W]`` tensors or CIFAR's ``[N, H, W, C]`` arrays."""
    x = torch.as_tensor(data)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _check_split(name: str, folder: Path, split: str, x: torch.Tensor, y: torch.Tensor) -> None:
    info = DATASETS[name]
    problem = ""
    if tuple(x.shape[1:]) != info.shape:
        problem = f"{split} images have shape {tuple(x.shape[1:])}, expected {info.shape}"
    elif y.shape != (len(x),):
        problem = f"{len(x)} {split} images but {len(y)} labels"
    elif len(y) and (int(y.min()) < 0 or int(y.max()) >= info.classes):
        problem = f"{split} labels run from {int(y.min())} to {int(y.max())}, expected 0 to {info.classes - 1}"
    if problem:
        raise DatasetCorrupt(f"{name} in {folder} is not in the expected format: {problem}. "
                             f"Replace the files there with the original ones, or pass --download to fetch them.")


def _missing_message(name: str, folder: Path, missing: list[str]) -> str:
    layout = _LAYOUTS[name]
    which = "none of them is there" if len(missing) == len(layout.files) else f"missing: {', '.join(missing)}"
    return (f"{name} not found: expected {', '.join(layout.files)} in {folder} ({which}). "
            f"Pass --download to fetch it (needs a network), or --data-root DIR for a folder that holds "
            f"{layout.folder}/.")


def _explain(name: str, folder: Path, download: bool, err: Exception) -> DatasetMissing:
    """The error to raise when torchvision fails to read ``name``: the missing or unreadable file if one is."""
    reason = f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")
    missing = [f for f in _LAYOUTS[name].files if not (folder / f).is_file()]
    if download and missing:
        return DatasetMissing(f"Could not download {name} into {folder.parent}: {reason}. Check the network, or "
                              f"fetch {', '.join(missing)} by hand into {folder} and pass --data-root DIR.")
    for filename in _LAYOUTS[name].files:
        problem = _unreadable(name, folder / filename)
        if problem:
            return DatasetCorrupt(f"{name}: {folder / filename} is truncated or not in the expected format "
                                  f"({problem}). Replace it with the original file, or delete it and pass --download.")
    return DatasetCorrupt(f"{name}: the files in {folder} could not be read ({reason}). "
                          f"Replace them with the original files, or delete them and pass --download.")


def _unreadable(name: str, path: Path) -> str:
    """Why ``path`` cannot be parsed the way torchvision parses it, or "" if it can."""
    try:
        if name == "fashion-mnist":
            mnist = importlib.import_module("torchvision.datasets.mnist")
            (mnist.read_image_file if "images" in path.name else mnist.read_label_file)(str(path))
        else:
            with path.open("rb") as f:
                if not isinstance(pickle.load(f, encoding="latin1"), dict):
                    return "not a pickled dict"
    except Exception as err:  # as in _from_files: a damaged file can raise almost anything
        return f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")
    return ""


def _crop_and_mirror(x: torch.Tensor, pad: int, mirror: bool, generator: torch.Generator) -> torch.Tensor:
    """Each image cropped at a random offset from its zero-padded copy, mirrored with chance 1/2 if ``mirror``."""
    n, channels, height, width = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=generator.device).to(x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)
    if mirror:
        flipped = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    # One gather for the whole batch: output pixel (i, c, r, k) = padded[i, c, rows[i, r], cols[i, k]].
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _shift_and_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each signal rolled by a random shift in [-3, 3] (``torch.roll``'s direction), plus Gaussian noise."""
    n, channels, length = x.shape
    shift = torch.randint(-_MNIST1D_SHIFT, _MNIST1D_SHIFT + 1, (n,), generator=generator, device=generator.device)
    index = (torch.arange(length, device=x.device) - shift.to(x.device)[:, None]) % length
    rolled = x.gather(2, index[:, None, :].expand(n, channels, length))
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    return rolled + _MNIST1D_NOISE * noise
