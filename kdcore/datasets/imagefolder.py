"""Image files in class folders, uploaded as one .zip (or given as a directory).

Layout (inside the zip, optionally under one top-level folder)::

    train/<class name>/<image>      e.g. train/cat/001.png
    test/<class name>/<image>       ("val/" is accepted in place of "test/")

Classes are the train folder names, sorted; test may use a subset of them. Images are decoded with
Pillow: if every image is grayscale the data has 1 channel, otherwise images are converted to RGB
(alpha dropped). Images whose size differs from the most common train size are resized to it
(bilinear). Normalization uses the train split's per-channel mean and std.
"""
from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from ._common import channel_stats, make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset
from .errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
TEST_DIRS = ("test", "val")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}

IMAGEFOLDER_FORMAT = (
    "a .zip of train/<class>/<image> and test/<class>/<image> (or val/) image files (png, jpg, ...); "
    "classes are the sorted train folder names"
)


def _list_files(path: Path) -> dict[str, bytes | Path]:
    """Relative POSIX path -> zip member bytes or file path, for every image file in the upload."""
    files: dict[str, bytes | Path] = {}
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                files[p.relative_to(path).as_posix()] = p
        return files
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                name = member.filename
                # zip entries are only read into memory, never extracted, so "../" names cannot escape
                if member.is_dir() or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if name.startswith("__MACOSX/"):
                    continue
                files[name] = zf.read(member)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{path.name} is not a readable .zip of image folders: {e}") from e
    return files


def _split_files(name: str, files: dict[str, bytes | Path]) -> dict[str, dict[str, list[bytes | Path]]]:
    """{"train"|"test": {class: [image, ...]}} after stripping one optional top-level folder."""
    parts = {k: PurePosixPath(k).parts for k in files}
    tops = {p[0] for p in parts.values() if p}
    strip = 1 if len(tops) == 1 and next(iter(tops)) not in ("train", *TEST_DIRS) else 0
    splits: dict[str, dict[str, list[bytes | Path]]] = {"train": {}, "test": {}}
    for key in sorted(files):
        p = parts[key][strip:]
        if len(p) != 3:
            continue  # not <split>/<class>/<file>
        split = "train" if p[0] == "train" else "test" if p[0] in TEST_DIRS else None
        if split is not None:
            splits[split].setdefault(p[1], []).append(files[key])
    if not splits["train"] or not splits["test"]:
        raise DatasetError(f"{name}: expected {IMAGEFOLDER_FORMAT}; found no images under "
                           + " and ".join(s + "/" for s in ("train", "test") if not splits[s]))
    return splits


def _load(path: Path) -> tuple[DatasetInfo, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from PIL import Image, UnidentifiedImageError

    name = path.name
    splits = _split_files(name, _list_files(path))
    classes = sorted(splits["train"])
    unknown = sorted(set(splits["test"]) - set(classes))
    if unknown:
        raise DatasetError(f"{name}: test classes {', '.join(unknown)} have no train folder")
    if len(classes) < 2:
        raise DatasetError(
            f"{name}: found one class folder ({classes[0]}); classification needs at least two"
        )

    images: dict[str, list[tuple[Image.Image, int]]] = {"train": [], "test": []}
    for split, by_class in splits.items():
        for label, cls in enumerate(classes):
            for src in by_class.get(cls, []):
                try:
                    img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
                    img.load()
                except (UnidentifiedImageError, OSError) as e:
                    raise DatasetError(f"{name}: an image in {split}/{cls}/ cannot be decoded: {e}") from e
                images[split].append((img, label))

    gray = all(img.mode in GRAY_MODES for split in images.values() for img, _ in split)
    mode = "L" if gray else "RGB"
    size = Counter(img.size for img, _ in images["train"]).most_common(1)[0][0]  # (W, H)

    def to_array(items: list[tuple[Image.Image, int]]) -> tuple[np.ndarray, np.ndarray]:
        arrs = []
        for img, _ in items:
            img = img.convert(mode)
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
            arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        return np.stack(arrs), np.array([lbl for _, lbl in items], dtype=np.int64)

    x_train, y_train = to_array(images["train"])
    x_test, y_test = to_array(images["test"])
    mean, std = channel_stats(x_train, 255.0)
    info = DatasetInfo(
        name="imagefolder",
        num_classes=len(classes),
        in_channels=x_train.shape[1],
        image_size=(int(size[1]), int(size[0])),
        mean=mean,
        std=std,
        class_names=tuple(classes),
        train_size=len(y_train),
        test_size=len(y_test),
    )
    return info, (x_train, y_train, x_test, y_test)


def inspect_imagefolder(path: Path) -> DatasetInfo:
    """Validate an uploaded image-folder zip and describe it; decodes every image (mean/std need them)."""
    return _load(Path(path))[0]


@register_dataset(
    "imagefolder",
    description="Your own images: an uploaded .zip with train/<class>/ and test/<class>/ folders of image "
    "files. Normalized with the train split's per-channel mean/std.",
    needs_artifact=True,
    inspect=inspect_imagefolder,
    artifact_format=IMAGEFOLDER_FORMAT,
)
def load_imagefolder(root: Path, artifact: Path | None, download: bool) -> TensorData:
    if artifact is None:
        raise DatasetError("dataset 'imagefolder' needs an uploaded .zip artifact")
    info, (x_train, y_train, x_test, y_test) = _load(Path(artifact))
    return make_data(info, x_train, y_train, x_test, y_test, max_value=255.0)
