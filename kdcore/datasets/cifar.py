"""CIFAR-10 and CIFAR-100 from torchvision's "python version" folders under the dataset root.

The batches are read here rather than through torchvision.datasets.CIFAR10/100: torchvision would
md5-check every file on each load and build a PIL-oriented dataset, while the training loop wants
one uint8 array per split. torchvision is still what downloads the folders when asked to.

The batch files are pickles. They are read only from the operator's configured dataset root (never
from an upload), and through an unpickler that resolves nothing but the few numpy names a pickled
array needs, so even a tampered file cannot make the loader call arbitrary code.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ._common import make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset
from .errors import DatasetError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# the fine labels, in the order of cifar-100-python/meta's fine_label_names (alphabetical)
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
worm
""".split())
assert len(CIFAR100_CLASSES) == 100

# Per-channel mean and std of the train split's pixels / 255 (the true pixel std, not the
# 0.2023/0.1994/0.2010 figures that circulate and are a std of per-image means).
CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    num_classes=10,
    in_channels=3,
    image_size=(32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    class_names=CIFAR10_CLASSES,
    train_size=50000,
    test_size=10000,
)

CIFAR100_INFO = DatasetInfo(
    name="cifar100",
    num_classes=100,
    in_channels=3,
    image_size=(32, 32),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    class_names=CIFAR100_CLASSES,
    train_size=50000,
    test_size=10000,
)

# (subfolder, train files, test file, label key, torchvision class)
LAYOUTS: dict[str, tuple[str, tuple[str, ...], str, str, str]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "labels",
        "CIFAR10",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "fine_labels", "CIFAR100"),
}

# What a pickled numpy array needs, and nothing else. The original files were written by Python 2
# (numpy.core); arrays pickled by numpy 2 name numpy._core, and protocol-2 pickles written by
# Python 3 encode bytes through _codecs.encode.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core"):
            # numpy 2 renamed numpy.core to numpy._core; import the new name to avoid its deprecation shim
            module = "numpy._core" + module[len("numpy.core"):]
        return getattr(importlib.import_module(module), name)


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR batch file as a dict with str keys (the originals have bytes keys)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        raise DatasetError(f"{path} is not a CIFAR python-version batch: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetError(
            f"{path} is not a CIFAR python-version batch: holds {type(obj).__name__}, not a dict"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_split(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        batch = read_batch(path)
        if "data" not in batch or label_key not in batch:
            raise DatasetError(f"{path}: a CIFAR batch needs the keys 'data' and {label_key!r}")
        data = np.asarray(batch["data"])
        lbls = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {data.dtype} {data.shape}"
            )
        if lbls.shape != (data.shape[0],):
            raise DatasetError(f"{path}: {data.shape[0]} images but {lbls.size} labels")
        # rows are 1024 red, then 1024 green, then 1024 blue values, row-major: exactly N,3,32,32
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(lbls)
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar(root: Path, download: bool, info: DatasetInfo) -> TensorData:
    sub, train_files, test_file, label_key, tv_class = LAYOUTS[info.name]
    base = root / info.name
    folder = base / sub
    names = [*train_files, test_file]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download:
        import torchvision.datasets as tvd

        # downloads and unpacks the official archive into base/sub (and checks its md5)
        getattr(tvd, tv_class)(root=str(base), train=True, download=True)
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(
            f"{info.name} not found under {folder}: expected torchvision's python-version files "
            + ", ".join(missing)
            + ("" if download else "; put the unpacked official archive there or allow downloading")
        )
    x_train, y_train = _read_split([folder / n for n in train_files], label_key)
    x_test, y_test = _read_split([folder / test_file], label_key)
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= info.num_classes):
            raise DatasetError(f"{folder}: {split} labels outside 0..{info.num_classes - 1}")
    return make_data(info, x_train, y_train, x_test, y_test, max_value=255.0)


@register_dataset(
    "cifar10",
    description="CIFAR-10, 32x32 colour images, 10 classes, 50000 train / 10000 test, from torchvision's "
    "python-version folder <dataset root>/cifar10/cifar-10-batches-py/.",
    info=CIFAR10_INFO,
)
def load_cifar10(root: Path, artifact: Path | None, download: bool) -> TensorData:
    return _load_cifar(root, download, CIFAR10_INFO)


@register_dataset(
    "cifar100",
    description="CIFAR-100 (fine labels), 32x32 colour images, 100 classes, 50000 train / 10000 test, from "
    "torchvision's python-version folder <dataset root>/cifar100/cifar-100-python/.",
    info=CIFAR100_INFO,
)
def load_cifar100(root: Path, artifact: Path | None, download: bool) -> TensorData:
    return _load_cifar(root, download, CIFAR100_INFO)
