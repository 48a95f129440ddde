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
Array headers are read before any data, so an object array is refused with a clear message. Pixel arrays
are read as streams, block by block (inspection at upload, preparation into the prepared store): memory
does not grow with the file. Only `load_dataset` without a store holds the arrays whole.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from ._common import ChannelStats, make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset
from .errors import DatasetError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("class_names",)
CHANNELS = (1, 3, 4)
STREAM_WORK_BYTES = 16 * 2**20  # a streamed block's float64 copy (mean/std): the reader's memory, whatever the file

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


def _read_exact(f: IO[bytes], n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            raise EOFError(f"the array ends {n - got} bytes early")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _open_array(zf: zipfile.ZipFile, key: str) -> tuple[IO[bytes], tuple[int, ...], bool, np.dtype]:
    """The member's stream, positioned at the data, with (shape, fortran order, dtype) from its header."""
    f = zf.open(f"{key}.npy")
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return f, tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


def _whole(zf: zipfile.ZipFile, key: str) -> np.ndarray:
    with zf.open(f"{key}.npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _rows(zf: zipfile.ZipFile, key: str, work_bytes: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive blocks of rows of array `key`, read from its zip member as a stream (compressed or not): a
    block's float64 copy stays near `work_bytes`. An array saved in Fortran order (np.save of a transposed
    view) has no contiguous rows in the file: it is read whole."""
    f, shape, fortran, dtype = _open_array(zf, key)
    with f:
        if fortran:
            yield np.frombuffer(f.read(), dtype=dtype).reshape(shape, order="F")
            return
        row = max(1, int(np.prod(shape[1:])))
        per = max(1, (work_bytes or STREAM_WORK_BYTES) // (8 * row))
        for start in range(0, shape[0], per):
            k = min(per, shape[0] - start)
            yield np.frombuffer(_read_exact(f, k * row * dtype.itemsize), dtype=dtype).reshape(k, *shape[1:])


Sink = Callable[[str, int, np.ndarray], None]  # (split, first row, NCHW block)


def _stream(path: Path, sink: Sink | None = None) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
    """Validates the whole file in one streamed pass and describes it: the headers, the labels (read whole:
    8 bytes a sample at most), every pixel block (range check; the train split's mean and std), each block
    handed to `sink` in NCHW. Memory: one block, never an array. Returns the info and the labels."""
    name = path.name
    headers = _headers(path)
    layout = _check_headers(name, headers)
    x_dtype = headers["x_train"][1]
    max_value = 255.0 if x_dtype == np.uint8 else 1.0
    try:
        with zipfile.ZipFile(path) as zf:
            ys = {k: _whole(zf, k) for k in ("y_train", "y_test")}
            raw_names = _whole(zf, "class_names") if "class_names" in headers else None
            num_classes, names = _classes(name, ys["y_train"], ys["y_test"], raw_names)
            channels = _to_nchw(np.empty((0, *headers["x_train"][0][1:]), x_dtype), layout).shape[1]
            stats = ChannelStats(channels, max_value)
            for split in ("train", "test"):
                key, first, lo, hi, ok = f"x_{split}", 0, np.inf, -np.inf, True
                for block in _rows(zf, key):
                    if block.dtype.kind == "f":  # NaN fails both comparisons, so it is caught here too
                        ok = ok and bool(np.all(block >= 0.0) and np.all(block <= 1.0))
                        lo, hi = min(lo, float(np.fmin.reduce(block, axis=None))), max(
                            hi, float(np.fmax.reduce(block, axis=None)))
                    nchw = _to_nchw(block, layout)
                    if split == "train":
                        stats.add(nchw)
                    if sink is not None and ok:
                        sink(split, first, nchw)
                    first += block.shape[0]
                if not ok:
                    raise DatasetError(f"{name}: {key} is float but not within [0, 1] (min {lo:.4g}, max {hi:.4g}, "
                                       "or NaN); scale float pixels to [0, 1] or save uint8 0..255")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{name} could not be read: {e}") from e
    mean, std = stats.result()
    (n_train, *_), (n_test, *_) = headers["x_train"][0], headers["x_test"][0]
    h, w = _to_nchw(np.empty((0, *headers["x_train"][0][1:]), np.uint8), layout).shape[2:]
    info = DatasetInfo(
        name="npz", num_classes=num_classes, in_channels=int(channels), image_size=(int(h), int(w)), mean=mean,
        std=std, class_names=names, train_size=int(n_train), test_size=int(n_test),
        raw_range="uint8 / 255" if max_value == 255.0 else "float in [0, 1] / 1",
        extra={"file_layout": {"NHW": "N,H,W", "NHWC": "N,H,W,C", "NCHW": "N,C,H,W"}[layout],
               "file_dtype": str(x_dtype)},
    )
    return info, ys


def _classes(name: str, y_train: np.ndarray, y_test: np.ndarray,
             raw_names: np.ndarray | None) -> tuple[int, tuple[str, ...]]:
    low = min(int(y_train.min()), int(y_test.min()))
    if low < 0:
        raise DatasetError(f"{name}: labels must be 0..K-1, found {low}")
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    if raw_names is not None:
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
    return num_classes, names


def _load(path: Path) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
    """Validate the whole file and return its DatasetInfo and arrays (x already NCHW), all in memory."""
    blocks: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    info, ys = _stream(path, lambda split, first, block: blocks[split].append(block))
    return info, {"x_train": np.concatenate(blocks["train"]), "y_train": ys["y_train"],
                  "x_test": np.concatenate(blocks["test"]), "y_test": ys["y_test"]}


def prepare_npz(path: Path, out: Path, on_progress: Callable[[int, int], None] | None = None) -> DatasetInfo:
    """Writes the upload into a prepared store's folder `out` (kdcore.datasets.store): `{split}_x.npy` N,C,H,W
    in the file's own pixel type (uint8, or float16/32/64 as given: no rounding) and `{split}_y.npy` int64,
    streamed block by block into memory-mapped arrays. Returns the info (mean/std of the train split)."""
    headers = _headers(path)
    layout = _check_headers(path.name, headers)
    total = headers["x_train"][0][0] + headers["x_test"][0][0]
    arrays: dict[str, np.ndarray] = {}
    done = [0]
    for split in ("train", "test"):
        shape = _to_nchw(np.empty((0, *headers[f"x_{split}"][0][1:]), np.uint8), layout).shape[1:]
        dtype = headers[f"x_{split}"][1].newbyteorder("=")  # as given (native byte order): no rounding
        arrays[split] = np.lib.format.open_memmap(out / f"{split}_x.npy", mode="w+", dtype=dtype,
                                                  shape=(headers[f"x_{split}"][0][0], *shape))
    if on_progress is not None:
        on_progress(0, total)

    def write(split: str, first: int, block: np.ndarray) -> None:
        arrays[split][first:first + block.shape[0]] = block
        done[0] += block.shape[0]
        if on_progress is not None:
            on_progress(done[0], total)

    info, ys = _stream(path, write)
    for split, a in arrays.items():
        a.flush()
        np.save(out / f"{split}_y.npy", ys[f"y_{split}"].astype(np.int64))
    return info


def inspect_npz(path: Path) -> DatasetInfo:
    """Validate an uploaded .npz and describe it (used by the API at upload time); DatasetError if unusable.

    It reads the data, not just the headers: the normalization constants are the train split's
    per-channel mean and std, and a float array outside [0, 1] should be refused at upload time
    rather than when a job starts. Streamed block by block: its memory does not grow with the file.
    """
    return _stream(Path(path))[0]


@register_dataset(
    "npz",
    description="Your own data: an uploaded .npz with x_train, y_train, x_test, y_test "
    "(optional class_names). Normalized with the train split's per-channel mean/std.",
    needs_artifact=True,
    inspect=inspect_npz,
    artifact_format=NPZ_FORMAT,
    preparable=True,
)
def load_npz(root: Path, artifact: Path | None, download: bool) -> TensorData:
    if artifact is None:
        raise DatasetError("dataset 'npz' needs an uploaded .npz artifact")
    info, a = _load(Path(artifact))
    max_value = 255.0 if a["x_train"].dtype == np.uint8 else 1.0
    return make_data(info, a["x_train"], a["y_train"], a["x_test"], a["y_test"], max_value)
