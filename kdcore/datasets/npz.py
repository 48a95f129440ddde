"""Datasets uploaded as one .npz file (numpy.savez / savez_compressed).

Required arrays: ``x_train``, ``y_train``, ``x_test``, ``y_test``; optional ``class_names``.

Image layout of x (the same for both splits), decided from its shape:
  * 3 dims ``N,H,W``: grayscale;
  * 4 dims ``N,H,W,C`` (channels last) when the last dim is 1, 3 or 4 and dim 1 is larger than 4;
  * otherwise 4 dims ``N,C,H,W`` (channels first) when dim 1 is 1, 3 or 4 — so when both readings
    fit (images of at most 4x4 pixels) channels-first, PyTorch's convention, wins.
Pixels: uint8 (divided by 255) or float in [0, 1] (kept). Labels: integers 0..K-1; K is the largest
label + 1 over both splits, or the length of ``class_names`` (a 1-D string array) when given.
Normalization uses the per-channel mean and std of the train split.

The file is opened with ``allow_pickle=False``: an upload cannot make the service unpickle anything.
Array headers are read before any data, so an object array is refused with a clear message.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._common import channel_stats, make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset
from .errors import DatasetError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("class_names",)
CHANNELS = (1, 3, 4)

NPZ_FORMAT = (
    "a .npz with x_train, y_train, x_test, y_test (and optionally class_names); x as N,H,W or N,H,W,C "
    "or N,C,H,W (C in 1, 3, 4), uint8 or float in [0, 1]; labels integers 0..K-1"
)


def iter_npz_headers(path: Path, *, name: str | None = None,
                     only_arrays: bool = False) -> Iterator[tuple[str, tuple[int, ...], np.dtype]]:
    """(array name, shape, dtype) for each member of a .npz archive, in archive order, from the .npy headers only.

    No array data is read and nothing is unpickled, so a caller can refuse an object array by its dtype before
    anything would load it. Members that are not .npy files are skipped (numpy.load never loads them), or
    refused when `only_arrays`. Raises DatasetError, its message starting with `name` (default: the file's
    name), for an archive or a header that cannot be read, including .npy format versions other than 1.0 and
    2.0 (3.0 is only written for structured dtypes with non-Latin-1 field names).

    The one .npz reader for uploads: the dataset checks below and the upload inspection in
    kdcore.checkpoints.inspection both use it.
    """
    name = path.name if name is None else name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{name} is not a readable .npz file (numpy.savez archive): {e}") from e
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                if only_arrays:
                    raise DatasetError(f"{name}: member {info.filename!r} is not a .npy array")
                continue
            key = info.filename[: -len(".npy")]
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise DatasetError(f"{name}: array {key!r} is unreadable: {e}") from e
            yield key, tuple(int(d) for d in shape), np.dtype(dtype)


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in the archive, read from the .npy headers only."""
    return {key: (shape, dtype) for key, shape, dtype in iter_npz_headers(path)}


def _layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        if shape[3] in CHANNELS and shape[1] > 4:
            return "NHWC"
        if shape[1] in CHANNELS:
            return "NCHW"
    raise DatasetError(
        f"x_train has shape {shape}: expected N,H,W (grayscale), N,H,W,C or N,C,H,W with C in 1, 3 or 4"
    )


def _to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHW":
        return x[:, None, :, :]
    if layout == "NHWC":
        return x.transpose(0, 3, 1, 2)
    return x


def _check_headers(name: str, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> str:
    """Validate names, dtypes and shapes before loading data; returns the x layout."""
    missing = [k for k in REQUIRED if k not in headers]
    if missing:
        raise DatasetError(
            f"{name} lacks the array(s) {', '.join(missing)}; found {', '.join(sorted(headers)) or 'none'}. "
            f"Expected {NPZ_FORMAT}"
        )
    for key in (*REQUIRED, *OPTIONAL):
        if key in headers and headers[key][1].hasobject:
            raise DatasetError(
                f"{name}: {key} is an object array (dtype {headers[key][1]}), which needs pickle to load; "
                "uploads are read without pickle. Save plain numeric arrays (and class_names as a "
                "fixed-width string array, e.g. np.array(names, dtype=str))"
            )
    (xtr, xtr_dt), (ytr, ytr_dt) = headers["x_train"], headers["y_train"]
    (xte, xte_dt), (yte, yte_dt) = headers["x_test"], headers["y_test"]
    layout = _layout(xtr)
    if xte[1:] != xtr[1:]:
        raise DatasetError(f"{name}: x_test has per-sample shape {xte[1:]} but x_train has {xtr[1:]}")
    for key, dt in (("x_train", xtr_dt), ("x_test", xte_dt)):
        if dt != np.uint8 and dt.kind != "f":
            raise DatasetError(f"{name}: {key} has dtype {dt}; expected uint8 (0..255) or float in [0, 1]")
    if (xtr_dt == np.uint8) != (xte_dt == np.uint8):
        # one scale applies to both splits, so they must share a pixel encoding
        raise DatasetError(
            f"{name}: x_train is {xtr_dt} but x_test is {xte_dt}; save both as uint8 or both as float"
        )
    for key, (shape, dt), n in (("y_train", (ytr, ytr_dt), xtr[0]), ("y_test", (yte, yte_dt), xte[0])):
        if dt.kind not in "iu":
            raise DatasetError(f"{name}: {key} has dtype {dt}; expected integer class labels 0..K-1")
        if len(shape) != 1:
            raise DatasetError(f"{name}: {key} has shape {shape}; expected one label per sample, shape (N,)")
        if shape[0] != n:
            xkey = "x" + key[1:]
            raise DatasetError(f"{name}: {xkey} has {n} samples but {key} has {shape[0]} labels")
    if xtr[0] == 0 or xte[0] == 0:
        raise DatasetError(f"{name}: both x_train and x_test need at least one sample")
    if "class_names" in headers:
        shape, dt = headers["class_names"]
        if dt.kind not in "US" or len(shape) != 1:
            raise DatasetError(f"{name}: class_names must be a 1-D string array, found {dt} {shape}")
    return layout


def _load(path: Path) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
    """Validate the whole file and return its DatasetInfo and arrays (x already NCHW)."""
    name = path.name
    layout = _check_headers(name, _headers(path))
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays: dict[str, Any] = {k: npz[k] for k in (*REQUIRED, *OPTIONAL) if k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{name} could not be read: {e}") from e

    y_train, y_test = arrays["y_train"], arrays["y_test"]
    low = min(int(y_train.min()), int(y_test.min()))
    if low < 0:
        raise DatasetError(f"{name}: labels must be 0..K-1, found {low}")
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    if "class_names" in arrays:
        raw_names = arrays["class_names"]
        names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw_names)
        if len(names) < num_classes:
            raise DatasetError(
                f"{name}: labels go up to {num_classes - 1} but class_names has {len(names)} entries"
            )
        num_classes = len(names)
    else:
        names = tuple(str(i) for i in range(num_classes))
    if num_classes < 2:
        raise DatasetError(f"{name}: the labels name only one class; classification needs at least two")

    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.dtype.kind == "f":
            # NaN fails both comparisons, so it is caught here too
            if not (np.all(x >= 0.0) and np.all(x <= 1.0)):
                raise DatasetError(
                    f"{name}: {key} is float but not within [0, 1] (min {np.nanmin(x):.4g}, "
                    f"max {np.nanmax(x):.4g}, or NaN); scale float pixels to [0, 1] or save uint8 0..255"
                )
        arrays[key] = _to_nchw(x, layout)

    x_train = arrays["x_train"]
    max_value = 255.0 if x_train.dtype == np.uint8 else 1.0
    mean, std = channel_stats(x_train, max_value)
    info = DatasetInfo(
        name="npz",
        num_classes=num_classes,
        in_channels=int(x_train.shape[1]),
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        mean=mean,
        std=std,
        class_names=names,
        train_size=int(x_train.shape[0]),
        test_size=int(arrays["x_test"].shape[0]),
        raw_range="uint8 / 255" if max_value == 255.0 else "float in [0, 1] / 1",
        extra={"file_layout": {"NHW": "N,H,W", "NHWC": "N,H,W,C", "NCHW": "N,C,H,W"}[layout],
               "file_dtype": str(x_train.dtype)},
    )
    return info, arrays


def inspect_npz(path: Path) -> DatasetInfo:
    """Validate an uploaded .npz and describe it (used by the API at upload time); DatasetError if unusable.

    It reads the data, not just the headers: the normalization constants are the train split's
    per-channel mean and std, and a float array outside [0, 1] should be refused at upload time
    rather than when a job starts.
    """
    return _load(Path(path))[0]


@register_dataset(
    "npz",
    description="Your own data: an uploaded .npz with x_train, y_train, x_test, y_test "
    "(optional class_names). Normalized with the train split's per-channel mean/std.",
    needs_artifact=True,
    inspect=inspect_npz,
    artifact_format=NPZ_FORMAT,
)
def load_npz(root: Path, artifact: Path | None, download: bool) -> TensorData:
    if artifact is None:
        raise DatasetError("dataset 'npz' needs an uploaded .npz artifact")
    info, a = _load(Path(artifact))
    max_value = 255.0 if a["x_train"].dtype == np.uint8 else 1.0
    return make_data(info, a["x_train"], a["y_train"], a["x_test"], a["y_test"], max_value)
