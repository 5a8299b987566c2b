"""Tests for gfprobe.study.data: every data set loads (the torchvision ones from the real files in
fixtures/datasets), missing and damaged files give one actionable error, and augmentation is exact.
"""

from __future__ import annotations

import importlib.util
import pickle
import random
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gfprobe.errors import ConfigError
from gfprobe.study import data
from gfprobe.study.data import DatasetCorrupt, DatasetMissing, augment, load
from gfprobe.study.names import DATASETS

FIXTURES = Path(__file__).parent.parent / "fixtures"
ROOT = FIXTURES / "datasets"
FILE_DATASETS = ("fashion-mnist", "cifar10", "cifar100")
FOLDERS = {"fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
SIZES = {"mnist1d": (4000, 1000), "digits": (1437, 360), "fashion-mnist": (60, 20), "cifar10": (20, 8),
         "cifar100": (20, 8)}
ALLOWED = "mnist1d, digits, fashion-mnist, cifar10, cifar100"


def read_idx(path: Path) -> np.ndarray:
    """An idx file parsed from its documented layout, independently of torchvision."""
    raw = path.read_bytes()
    assert raw[:3] == b"\x00\x00\x08"
    dims = struct.unpack(f">{raw[3]}I", raw[4:4 + 4 * raw[3]])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def read_pickles(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batches = [pickle.loads((folder / n).read_bytes(), encoding="latin1") for n in names]
    x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
    return x, np.concatenate([b[label_key] for b in batches])


def raw_files(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixture's uint8 images [N, C, H, W] and labels, read straight from the files."""
    folder = ROOT / FOLDERS[name]
    if name == "fashion-mnist":
        return (read_idx(folder / "train-images-idx3-ubyte")[:, None], read_idx(folder / "train-labels-idx1-ubyte"),
                read_idx(folder / "t10k-images-idx3-ubyte")[:, None], read_idx(folder / "t10k-labels-idx1-ubyte"))
    if name == "cifar10":
        train = read_pickles(folder, [f"data_batch_{i}" for i in range(1, 6)], "labels")
        return (*train, *read_pickles(folder, ["test_batch"], "labels"))
    return (*read_pickles(folder, ["train"], "fine_labels"), *read_pickles(folder, ["test"], "fine_labels"))


def copy_of(name: str, tmp_path: Path) -> Path:
    """A private copy of one fixture data set under a fresh root, to damage."""
    shutil.copytree(ROOT / FOLDERS[name], tmp_path / FOLDERS[name])
    return tmp_path


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_dataset_loads_with_its_shape_classes_and_normalisation(name: str) -> None:
    split = load(name, root=ROOT)
    info = DATASETS[name]
    n_train, n_test = SIZES[name]
    assert split.x_train.shape == (n_train, *info.shape) and split.x_test.shape == (n_test, *info.shape)
    assert split.y_train.shape == (n_train,) and split.y_test.shape == (n_test,)
    assert split.x_train.dtype == split.x_test.dtype == torch.float32
    assert split.y_train.dtype == split.y_test.dtype == torch.int64
    for y in (split.y_train, split.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < info.classes
    per_channel = split.x_train.transpose(0, 1).reshape(info.shape[0], -1).double()
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(info.shape[0], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(info.shape[0], dtype=torch.float64),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_fixture_values_are_the_file_bytes_normalised_with_train_statistics(name: str) -> None:
    x_train, y_train, x_test, y_test = raw_files(name)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    split = load(name, root=ROOT)
    torch.testing.assert_close(split.x_train.double(), torch.from_numpy((x_train - mean) / std), atol=1e-5, rtol=0)
    torch.testing.assert_close(split.x_test.double(), torch.from_numpy((x_test - mean) / std), atol=1e-5, rtol=0)
    assert split.y_train.tolist() == y_train.tolist() and split.y_test.tolist() == y_test.tolist()


def test_cifar100_labels_are_the_fine_labels() -> None:
    batch = pickle.loads((ROOT / "cifar-100-python" / "train").read_bytes(), encoding="latin1")
    assert batch["fine_labels"] != batch["coarse_labels"]  # else this test could not tell them apart
    assert load("cifar100", root=ROOT).y_train.tolist() == batch["fine_labels"]


def test_mnist1d_is_the_package_default_data_and_leaves_global_rngs_alone() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    data._mnist1d_arrays.cache_clear()  # make load() generate again, to watch the global generators
    random.seed(7)
    np.random.seed(7)
    split = load("mnist1d")
    assert (random.random(), np.random.rand()) == (random.Random(7).random(), np.random.RandomState(7).rand())
    reference = make_dataset(get_dataset_args())
    x = torch.from_numpy(reference["x"])
    expected = (x - x.mean()) / x.std(correction=0)
    torch.testing.assert_close(split.x_train[:, 0].double(), expected, atol=1e-5, rtol=0)
    assert split.y_test.tolist() == reference["y_test"].tolist()


def test_loads_are_independent_copies() -> None:
    first = load("mnist1d")
    before = first.x_train.clone()
    first.x_train.add_(1.0)
    first.y_train.zero_()
    second = load("mnist1d")
    assert torch.equal(second.x_train, before) and int(second.y_train.max()) == 9


def test_digits_split_is_fixed_and_stratified() -> None:
    first, second = load("digits"), load("digits")
    assert torch.equal(first.x_test, second.x_test) and torch.equal(first.y_train, second.y_train)
    train_counts = torch.bincount(first.y_train, minlength=10)
    test_counts = torch.bincount(first.y_test, minlength=10)
    # Stratified: every class is split 80/20 to within one example.
    assert ((test_counts - 0.2 * (train_counts + test_counts)).abs() <= 1).all()


def test_layouts_match_what_torchvision_reads() -> None:
    from torchvision import datasets

    fashion = data._LAYOUTS["fashion-mnist"]
    assert fashion.files == tuple(f.removesuffix(".gz") for f, _ in datasets.FashionMNIST.resources)
    for name, cls in (("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)):
        layout = data._LAYOUTS[name]
        assert layout.folder == cls.base_folder
        assert layout.files == (*(f for f, _ in cls.train_list + cls.test_list), cls.meta["filename"])


def test_fixture_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_datasets", FIXTURES / "make_datasets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_all(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file())
    for path in written:
        assert (tmp_path / path).read_bytes() == (ROOT / path).read_bytes(), path


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_no_data_root_asks_for_one(name: str) -> None:
    with pytest.raises(DatasetMissing, match=f"^{name} is read from files and needs --data-root DIR") as info:
        load(name)
    assert_one_line(str(info.value))


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_empty_root_names_the_folder_every_file_and_both_fixes(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match=f"^{name} not found") as info:
        load(name, root=tmp_path)
    message = str(info.value)
    assert f"in {tmp_path / FOLDERS[name]} (none of them is there)" in message
    for filename in data._LAYOUTS[name].files:
        assert filename in message
    assert "--download" in message and "--data-root DIR" in message
    assert_one_line(message)


@pytest.mark.parametrize(("name", "filename"), [("fashion-mnist", "t10k-labels-idx1-ubyte"),
                                                ("cifar10", "data_batch_3"), ("cifar10", "batches.meta"),
                                                ("cifar100", "meta")])
def test_one_missing_file_is_named(name: str, filename: str, tmp_path: Path) -> None:
    root = copy_of(name, tmp_path)
    (root / FOLDERS[name] / filename).unlink()
    with pytest.raises(DatasetMissing, match=re.escape(f"(missing: {filename}). Pass --download")) as info:
        load(name, root=root)
    assert type(info.value) is DatasetMissing


@pytest.mark.parametrize(("name", "filename", "keep"), [
    ("fashion-mnist", "train-images-idx3-ubyte", 5000),
    ("fashion-mnist", "t10k-labels-idx1-ubyte", 18),
    ("fashion-mnist", "t10k-images-idx3-ubyte", 6),  # cut inside the header
    ("cifar10", "data_batch_2", 4000),
    ("cifar10", "batches.meta", 60),
    ("cifar100", "test", 100),
], ids=lambda v: str(v))
def test_truncated_file_is_named_in_one_clear_message(name: str, filename: str, keep: int, tmp_path: Path) -> None:
    root = copy_of(name, tmp_path)
    path = root / FOLDERS[name] / filename
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetCorrupt, match=re.escape(f"{name}: {path} is truncated or not in the expected format")
                       ) as info:
        load(name, root=root)
    assert "--download" in str(info.value)
    assert_one_line(str(info.value))


def test_file_of_another_kind_is_named(tmp_path: Path) -> None:
    root = copy_of("cifar10", tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(DatasetCorrupt, match=re.escape(f"{path} is truncated or not in the expected format")):
        load("cifar10", root=root)


def test_labels_that_do_not_fit_the_images_are_reported(tmp_path: Path) -> None:
    root = copy_of("fashion-mnist", tmp_path)
    labels = np.zeros(59, dtype=np.uint8)
    (root / "FashionMNIST/raw/train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 59)
                                                                    + labels.tobytes())
    with pytest.raises(DatasetCorrupt, match="not in the expected format: 60 train images but 59 labels"):
        load("fashion-mnist", root=root)


def test_labels_out_of_range_are_reported(tmp_path: Path) -> None:
    root = copy_of("cifar10", tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch["labels"][0] = 10
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetCorrupt, match="test labels run from 0 to 10, expected 0 to 9"):
        load("cifar10", root=root)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail as if not installed
    expected = "The digits data set needs the scikit-learn package, which is not installed: pip install scikit-learn"
    with pytest.raises(DatasetMissing, match=re.escape(expected)):
        load("digits")


def test_unknown_name_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match=re.escape(f"Unknown data set 'mnist': choose one of {ALLOWED}.")):
        load("mnist")
    with pytest.raises(ConfigError, match=re.escape(ALLOWED)):
        augment("CIFAR10", torch.zeros(1, 3, 32, 32), torch.Generator())


# --- augmentation ------------------------------------------------------------------------------


def batch(name: str, n: int = 64) -> torch.Tensor:
    return torch.randn(n, *DATASETS[name].shape, generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("name", list(DATASETS))
def test_augment_returns_a_new_batch_and_is_seeded(name: str) -> None:
    x = batch(name)
    original = x.clone()
    out = augment(name, x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, original) and out.data_ptr() != x.data_ptr()
    assert torch.equal(out, augment(name, x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(name, x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, x)


@pytest.mark.parametrize(("name", "pad", "mirror"), [("cifar10", 4, True), ("cifar100", 4, True),
                                                     ("fashion-mnist", 2, True), ("digits", 1, False)])
def test_augment_is_a_crop_of_the_zero_padded_image_maybe_mirrored(name: str, pad: int, mirror: bool) -> None:
    x = batch(name, 128)
    out = augment(name, x, torch.Generator().manual_seed(5))
    height, width = x.shape[2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    found = []  # (sample, dy, dx, flipped) for every candidate crop a sample equals
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, :, dy:dy + height, dx:dx + width]
            for flipped in (False, True):
                same = (out == (crop.flip(-1) if flipped else crop)).flatten(1).all(1)
                found += [(int(i), dy, dx, flipped) for i in same.nonzero().flatten()]
    assert sorted(i for i, *_ in found) == list(range(len(x)))  # each sample is exactly one candidate
    assert {f for *_, f in found} == ({False, True} if mirror else {False})
    # Offsets cover the whole padding, both ways: 128 draws of 2 * pad + 1 values.
    assert {dy for _, dy, _, _ in found} == {dx for _, _, dx, _ in found} == set(range(2 * pad + 1))


def test_mnist1d_augment_is_a_roll_by_at_most_3_plus_small_noise() -> None:
    x = batch("mnist1d", 256)
    out = augment("mnist1d", x, torch.Generator().manual_seed(2))
    shifts = list(range(-3, 4))
    residuals = torch.stack([(out - torch.roll(x, s, dims=2)).pow(2).mean((1, 2)).sqrt() for s in shifts])
    best = residuals.argmin(0)
    # The right roll leaves only the noise (std 0.05); every other one leaves a random signal (std ~1.4).
    assert (residuals.min(0).values < 0.1).all() and (residuals.kthvalue(2, 0).values > 0.8).all()
    assert set(best.tolist()) == set(range(len(shifts)))  # all seven shifts occur in 256 draws
    noise = out - torch.stack([torch.roll(x[i], shifts[int(b)], dims=1) for i, b in enumerate(best)])
    assert abs(float(noise.std()) - 0.05) < 0.003 and abs(float(noise.mean())) < 0.003


def test_augment_rejects_a_batch_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=re.escape("augment('digits') needs a float batch of shape [N, 1, 8, 8]")):
        augment("digits", torch.zeros(4, 1, 28, 28), torch.Generator())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(DATASETS))
def test_augment_on_cuda_with_a_cpu_generator_matches_cpu(name: str) -> None:
    x = batch(name)
    on_cpu = augment(name, x, torch.Generator().manual_seed(3))
    on_gpu = augment(name, x.cuda(), torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-6, rtol=0)
