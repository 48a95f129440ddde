"""MNIST and Fashion-MNIST from the four original IDX files in ``<root>/<name>/``.

The files are read directly (no torchvision dataset object), so an operator can drop the original
downloads in place, gzipped or not. torchvision is used only to download them when asked to.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ._common import make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset
from .errors import DatasetError
from .idx import read_idx

# split -> (images stem, labels stem); the same names for both datasets
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_INFO = DatasetInfo(
    name="mnist",
    num_classes=10,
    in_channels=1,
    image_size=(28, 28),
    mean=(0.1307,),
    std=(0.3081,),
    class_names=tuple(str(i) for i in range(10)),
    train_size=60000,
    test_size=10000,
)

FASHION_MNIST_INFO = DatasetInfo(
    name="fashion_mnist",
    num_classes=10,
    in_channels=1,
    image_size=(28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    train_size=60000,
    test_size=10000,
)


def _candidates(stem: str) -> list[str]:
    # also the dotted spelling ("train-images.idx3-ubyte") that some mirrors and Windows unpackers use
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def find_idx_file(folder: Path, stem: str) -> Path | None:
    for name in _candidates(stem):
        path = folder / name
        if path.is_file():
            return path
    return None


def _missing(folder: Path) -> list[str]:
    return [stem for pair in IDX_FILES.values() for stem in pair if find_idx_file(folder, stem) is None]


def _download(folder: Path, torchvision_class: str) -> None:
    """Fetch the raw files with torchvision into a temporary folder beside ``folder``, then move them in.

    The temporary folder sits under the same parent so the final move is a rename on one filesystem,
    and a half-finished download never leaves partial files under the real name.
    """
    import torchvision.datasets as tvd

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder.parent) as tmp:
        dataset_cls = getattr(tvd, torchvision_class)
        dataset_cls(root=tmp, train=True, download=True)
        raw = Path(tmp) / torchvision_class / "raw"
        for stem in (s for pair in IDX_FILES.values() for s in pair):
            if find_idx_file(folder, stem) is not None:
                continue
            # prefer the compressed original (a quarter of the size); torchvision keeps both
            gz = raw / f"{stem}.gz"
            src = gz if gz.is_file() else find_idx_file(raw, stem)
            if src is None:
                raise DatasetError(f"torchvision's {torchvision_class} download did not produce {stem}")
            shutil.move(str(src), str(folder / src.name))


def read_idx_dataset(folder: Path, info: DatasetInfo) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) with x as N,1,H,W uint8, after checking the files agree."""
    out: list[np.ndarray] = []
    for split, (img_stem, lbl_stem) in IDX_FILES.items():
        img_path = find_idx_file(folder, img_stem)
        lbl_path = find_idx_file(folder, lbl_stem)
        assert img_path is not None and lbl_path is not None  # checked by the caller
        images = read_idx(img_path, expected_ndim=3)
        lbls = read_idx(lbl_path, expected_ndim=1)
        if images.dtype != np.uint8 or lbls.dtype != np.uint8:
            raise DatasetError(f"{folder}: {info.name} {split} files must hold unsigned bytes (IDX type 08)")
        if images.shape[1:] != info.image_size:
            raise DatasetError(
                f"{img_path}: expected {info.image_size[0]}x{info.image_size[1]} images, "
                f"found {images.shape[1]}x{images.shape[2]}"
            )
        if images.shape[0] != lbls.shape[0]:
            raise DatasetError(
                f"{folder}: {info.name} {split} split has {images.shape[0]} images but {lbls.shape[0]} labels"
            )
        if lbls.size and int(lbls.max()) >= info.num_classes:
            raise DatasetError(f"{lbl_path}: label {int(lbls.max())} out of range 0..{info.num_classes - 1}")
        out += [images[:, None, :, :], lbls]
    return tuple(out)


def _load_idx_dataset(root: Path, download: bool, info: DatasetInfo, torchvision_class: str) -> TensorData:
    folder = root / info.name
    missing = _missing(folder)
    if missing and download:
        _download(folder, torchvision_class)
        missing = _missing(folder)
    if missing:
        raise DatasetError(
            f"{info.name} not found under {folder}: expected "
            + ", ".join(f"{stem}[.gz]" for stem in missing)
            + (" (the download did not provide them)" if download
               else "; put the original IDX files there or allow downloading")
        )
    x_train, y_train, x_test, y_test = read_idx_dataset(folder, info)
    return make_data(info, x_train, y_train, x_test, y_test, max_value=255.0)


@register_dataset(
    "mnist",
    description="MNIST handwritten digits, 28x28 grayscale, 60000 train / 10000 test, read from the four "
    "original IDX files in <dataset root>/mnist/.",
    info=MNIST_INFO,
)
def load_mnist(root: Path, artifact: Path | None, download: bool) -> TensorData:
    return _load_idx_dataset(root, download, MNIST_INFO, "MNIST")


@register_dataset(
    "fashion_mnist",
    description="Fashion-MNIST (Zalando), 28x28 grayscale clothing, 10 classes, 60000 train / 10000 test, "
    "read from the four original IDX files in <dataset root>/fashion_mnist/.",
    info=FASHION_MNIST_INFO,
)
def load_fashion_mnist(root: Path, artifact: Path | None, download: bool) -> TensorData:
    return _load_idx_dataset(root, download, FASHION_MNIST_INFO, "FashionMNIST")
