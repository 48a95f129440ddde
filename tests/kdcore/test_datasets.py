"""kdcore.datasets: loaders, validation of bad data, the catalog and batch augmentation.

Everything here runs offline on CPU: MNIST comes from the shared folder of original IDX files, every
other dataset from small files that the tests write themselves.
"""
from __future__ import annotations

import gzip
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.datasets import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    augment_batch,
    dataset_catalog,
    dataset_info,
    inspect_imagefolder,
    inspect_npz,
    load_dataset,
    read_idx,
    register_dataset,
    write_idx,
)
from kdcore.datasets.cifar import CIFAR10_INFO, CIFAR100_INFO
from kdcore.datasets.digits import DIGITS_INFO, digits_split
from kdcore.datasets.mnist import MNIST_INFO
from kdcore.registry import UnknownNameError

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared/datasets/mnist"


def denormalize(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Back to [0, 1] pixels, to compare loaded tensors with the raw data written by a test."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return x * std + mean


# ---------------------------------------------------------------- digits


def test_digits_split_shapes_and_normalization(tmp_path: Path) -> None:
    data = load_dataset("digits", tmp_path)
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.info.num_classes == 10 and set(data.y_test.tolist()) == set(range(10))
    assert abs(float(data.x_train.mean())) < 1e-3
    assert abs(float(data.x_train.std()) - 1.0) < 1e-3
    # the split is fixed: a second load gives the same tensors
    again = load_dataset("digits", tmp_path)
    assert torch.equal(data.x_test, again.x_test) and torch.equal(data.y_train, again.y_train)


def test_digits_constants_match_train_split() -> None:
    x_train, _, _, _ = digits_split()
    pixels = x_train.astype(np.float64) / 16.0
    assert DIGITS_INFO.mean == (round(float(pixels.mean()), 4),)
    assert DIGITS_INFO.std == (round(float(pixels.std()), 4),)
    assert dataset_info("digits") == DIGITS_INFO


# ---------------------------------------------------------------- MNIST / IDX


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST folder not present")
def test_mnist_from_shared_idx_files(tmp_path: Path) -> None:
    (tmp_path / "mnist").symlink_to(SHARED_MNIST)
    data = load_dataset("mnist", tmp_path)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    # the standard constants normalize the train split to mean ~0, std ~1
    assert abs(float(data.x_train.mean())) < 1e-3 and abs(float(data.x_train.std()) - 1.0) < 1e-3
    background = (0.0 - MNIST_INFO.mean[0]) / MNIST_INFO.std[0]
    assert float(data.x_train.min()) == pytest.approx(background, abs=1e-5)
    assert (data.info.train_size, data.info.test_size) == (60000, 10000)
    assert data.info.input_shape == dataset_info("mnist").input_shape == (1, 28, 28)


def _fake_idx_folder(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = False) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n, dtype=np.uint8))


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_small_idx_folder(tmp_path: Path, gz: bool) -> None:
    _fake_idx_folder(tmp_path / "fashion_mnist", gz=gz)
    data = load_dataset("fashion_mnist", tmp_path)
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    raw = read_idx(tmp_path / "fashion_mnist" / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}")
    restored = denormalize(data.x_test, data.info)[:, 0] * 255
    assert torch.allclose(restored, torch.from_numpy(raw).float(), atol=1e-3)
    assert data.info.train_size == 6 and data.info.class_names[0] == "T-shirt/top"


def test_idx_round_trip_keeps_dtype_and_shape(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 5
    write_idx(tmp_path / "a.idx.gz", arr)
    back = read_idx(tmp_path / "a.idx.gz", expected_ndim=3)
    assert back.dtype == np.int16 and np.array_equal(back, arr)


def test_idx_parser_rejects_corrupt_files(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_idx(good, np.zeros((3, 28, 28), np.uint8))
    raw = good.read_bytes()

    truncated = tmp_path / "truncated"
    truncated.write_bytes(raw[:-10])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_idx(truncated)

    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(bad_magic)

    with pytest.raises(DatasetError, match="expected an IDX file with 1 dimensions"):
        read_idx(good, expected_ndim=1)

    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(gzip.compress(raw)[:-8])  # drop the CRC/size trailer
    with pytest.raises(DatasetError, match="not a valid gzip file"):
        read_idx(bad_gzip)


def test_mnist_with_corrupt_file_raises(tmp_path: Path) -> None:
    _fake_idx_folder(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_mnist_images_and_labels_must_agree(tmp_path: Path) -> None:
    _fake_idx_folder(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="4 images but 3 labels"):
        load_dataset("mnist", tmp_path)


def test_missing_mnist_without_download_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "mnist") in message
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message


# ---------------------------------------------------------------- CIFAR


def _write_batch(path: Path, data: np.ndarray, labels: list[int], label_key: bytes) -> None:
    # bytes keys and protocol 2, like the official python-version files
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", label_key: labels, b"data": data}, f, protocol=2)


def _fake_cifar(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Writes a tiny CIFAR folder (2 images per train file, 3 test images); returns the test split."""
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, train_files, test_file, key, k = root / "cifar10/cifar-10-batches-py", \
            [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10
    else:
        folder, train_files, test_file, key, k = root / "cifar100/cifar-100-python", ["train"], "test", \
            b"fine_labels", 100
    folder.mkdir(parents=True)
    for f in train_files:
        _write_batch(folder / f, rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                     rng.integers(0, k, 2).tolist(), key)
    x_test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    y_test = np.array([0, 1, k - 1])
    _write_batch(folder / test_file, x_test, y_test.tolist(), key)
    return x_test, y_test


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_on_generated_folder(tmp_path: Path, name: str) -> None:
    x_test, y_test = _fake_cifar(tmp_path, name)
    data = load_dataset(name, tmp_path)
    n_train = 10 if name == "cifar10" else 2
    assert data.x_train.shape == (n_train, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.y_test.tolist() == y_test.tolist() and data.y_test.dtype == torch.int64
    assert data.info.num_classes == (10 if name == "cifar10" else 100)
    # rows are R plane, G plane, B plane: pixel (c, r, q) of image i is data[i, c*1024 + r*32 + q]
    restored = denormalize(data.x_test, data.info) * 255
    assert float(restored[2, 1, 5, 7]) == pytest.approx(float(x_test[2, 1024 + 5 * 32 + 7]), abs=1e-3)
    assert torch.allclose(restored.reshape(3, -1), torch.from_numpy(x_test).float(), atol=1e-3)


def test_cifar_refuses_pickles_that_call_code(tmp_path: Path) -> None:
    _fake_cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("this must never run",))

    with open(tmp_path / "cifar10/cifar-10-batches-py/test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetError, match="not allowed"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)
    assert dataset_info("cifar10") == CIFAR10_INFO and CIFAR100_INFO.class_names[-1] == "worm"


# ---------------------------------------------------------------- npz


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "layout, shape, channels",
    [("N,H,W", (10, 12, 9), 1), ("N,C,H,W", (10, 3, 12, 9), 3), ("N,H,W,C", (10, 12, 9, 3), 3)],
)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npz_round_trip(
    tmp_path: Path, layout: str, shape: tuple[int, ...], channels: int, dtype: str
) -> None:
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    x = raw if dtype == "uint8" else (raw / 255.0).astype(np.float32)
    path = _save_npz(tmp_path / "d.npz", x_train=x[:7], y_train=np.array([0, 1, 2, 0, 1, 2, 0]),
                     x_test=x[7:], y_test=np.array([2, 1, 3]))
    info = inspect_npz(path)
    assert info == dataset_info("npz", path)
    assert (info.num_classes, info.in_channels, info.image_size) == (4, channels, (12, 9))
    assert info.extra["file_layout"] == layout and info.class_names == ("0", "1", "2", "3")

    data = load_dataset("npz", tmp_path, artifact=path)
    assert data.x_train.shape == (7, channels, 12, 9) and data.x_test.shape == (3, channels, 12, 9)
    assert data.y_test.tolist() == [2, 1, 3] and data.y_test.dtype == torch.int64
    # per-channel statistics of the train split normalize it to mean ~0, std ~1
    per_channel = data.x_train.transpose(0, 1).reshape(channels, -1)
    assert per_channel.mean(dim=1).abs().max() < 1e-3
    assert (per_channel.std(dim=1, unbiased=False) - 1).abs().max() < 1e-3
    if layout == "N,H,W":
        expected = raw[:, None]
    elif layout == "N,H,W,C":
        expected = raw.transpose(0, 3, 1, 2)
    else:
        expected = raw
    restored = denormalize(data.x_test, data.info) * 255
    assert torch.allclose(restored, torch.from_numpy(expected[7:]).float(), atol=2e-3)


def test_npz_class_names(tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8), np.uint8)
    x[0] = 255  # not constant, so the std is real
    path = _save_npz(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x[:2],
                     y_test=np.array([0, 1]), class_names=np.array(["cat", "dog", "bird"]))
    info = inspect_npz(path)
    assert info.class_names == ("cat", "dog", "bird") and info.num_classes == 3


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.zeros((5, 8, 8), np.uint8), "y_train": np.zeros(4, np.int64)},
         "x_train has 5 samples but y_train has 4 labels"),
        ({"x_train": np.array([None] * 5, dtype=object)}, "object array"),
        ({"y_train": np.zeros(5, np.float32)}, "expected integer class labels"),
        ({"x_train": np.full((5, 8, 8), 2.0, np.float32), "x_test": np.zeros((2, 8, 8), np.float32)},
         "not within \\[0, 1\\]"),
        ({"x_test": np.zeros((2, 9, 8), np.uint8)}, "per-sample shape"),
        ({"x_train": np.zeros((5, 8, 8, 8, 8), np.uint8)}, "expected N,H,W"),
        ({"y_test": np.array([0, -1])}, "labels must be 0..K-1"),
        ({"class_names": np.array(["only-one"])}, "class_names has 1 entries"),
    ],
)
def test_bad_npz_raises(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    good = {"x_train": np.zeros((5, 8, 8), np.uint8), "y_train": np.array([0, 1, 0, 1, 0]),
            "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.array([0, 1])}
    path = _save_npz(tmp_path / "bad.npz", **{**good, **arrays})
    with pytest.raises(DatasetError, match=message):
        inspect_npz(path)
    with pytest.raises(DatasetError, match=message):
        load_dataset("npz", tmp_path, artifact=path)


def test_npz_missing_arrays_not_a_zip_and_no_artifact(tmp_path: Path) -> None:
    path = _save_npz(tmp_path / "partial.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="lacks the array\\(s\\) y_train, x_test, y_test"):
        inspect_npz(path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        dataset_info("npz", junk)
    with pytest.raises(DatasetError, match="needs an uploaded artifact"):
        dataset_info("npz")
    with pytest.raises(DatasetError, match="needs an uploaded artifact"):
        load_dataset("npz", tmp_path)


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_zip(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "images.zip"
    rng = np.random.default_rng(3)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 3), ("test", 1)):
            for cls in ("cat", "dog"):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, "PNG")
                    zf.writestr(f"pets/{split}/{cls}/{i}.png", buf.getvalue())
    info = inspect_imagefolder(path)
    assert (info.num_classes, info.in_channels, info.image_size) == (2, 3, (10, 12))
    assert info.class_names == ("cat", "dog")
    data = load_dataset("imagefolder", tmp_path, artifact=path)
    assert data.x_train.shape == (6, 3, 10, 12) and data.y_test.tolist() == [0, 1]


# ---------------------------------------------------------------- augmentation


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("info", [CIFAR10_INFO, MNIST_INFO], ids=["cifar-like", "mnist-like"])
def test_augment_keeps_shape_dtype_device_and_changes_data(device: str, info: DatasetInfo) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, info.in_channels, *info.image_size, device=device)
    out = augment_batch(x, info, generator=gen)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert not torch.equal(out, x)
    # reproducible with the same seed
    again = augment_batch(x, info, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_mnist_like_translates_without_flipping() -> None:
    info = MNIST_INFO
    x = torch.randn(32, 1, 28, 28)
    out = augment_batch(x, info, generator=torch.Generator().manual_seed(1))
    fill = -info.mean[0] / info.std[0]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=fill)
    for i in range(32):
        # every output is some un-mirrored 28x28 window of the padded input, shifted by at most 2 px
        windows = [padded[i, :, r : r + 28, q : q + 28] for r in range(5) for q in range(5)]
        assert any(torch.allclose(out[i], w, atol=1e-6, rtol=0) for w in windows)


def test_augment_cifar_like_flips_and_pads_with_black() -> None:
    info = CIFAR10_INFO
    x = torch.randn(64, 3, 32, 32)
    no_crop = DatasetInfo(**{**info.__dict__, "extra": {"augment_pad": 0}})
    out = augment_batch(x, no_crop, generator=torch.Generator().manual_seed(2))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)

    # with padding, the border that comes into view is raw black, i.e. -mean/std per channel
    gen = torch.Generator().manual_seed(3)
    shifted = augment_batch(torch.full((64, 3, 32, 32), 5.0), info, generator=gen)
    black = (-torch.tensor(info.mean) / torch.tensor(info.std)).view(3, 1, 1)
    border = shifted != 5.0
    assert border.any()
    assert torch.allclose(torch.where(border, shifted, black.expand_as(shifted)), black.expand_as(shifted))


# ---------------------------------------------------------------- registry and catalog


def test_unknown_dataset_raises_unknown_name_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="mnist"):
        load_dataset("minst", tmp_path)
    with pytest.raises(UnknownNameError):
        dataset_info("imagenet")


def test_catalog_is_json_and_lists_the_datasets() -> None:
    catalog = dataset_catalog()
    json.dumps(catalog)
    by_name = {entry["name"]: entry for entry in catalog}
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz"} <= set(by_name)
    assert by_name["npz"]["needs_artifact"] is True and by_name["npz"]["format"] is None
    assert by_name["npz"]["params"]["required"] == ["artifact"]
    assert by_name["mnist"]["format"]["input_shape"] == [1, 28, 28]
    assert by_name["cifar100"]["format"]["num_classes"] == 100
    assert by_name["digits"]["params"]["properties"]["augment"]["enum"] == ["none", "standard"]


def test_register_dataset_adds_an_entry() -> None:
    info = DatasetInfo("toy", 2, 1, (2, 2), (0.5,), (0.5,), ("a", "b"))
    register_dataset("toy_for_test", description="test only", info=info)(lambda root, art, download: None)
    try:
        assert dataset_info("toy_for_test") is info
        assert "toy_for_test" in {e["name"] for e in dataset_catalog()}
    finally:
        DATASETS._entries.pop("toy_for_test")
