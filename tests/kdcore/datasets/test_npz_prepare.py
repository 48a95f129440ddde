"""npz uploads prepared into the store (kdcore.datasets.npz.prepare_npz through PreparedStore): streamed, in
the file's own pixel type (float16 stays float16), read back exactly as the in-memory loader normalizes;
and inspection whose memory does not grow with the file."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.datasets import inspect_npz, load_dataset
from kdcore.datasets import npz as npz_mod
from kdcore.datasets.errors import DatasetError
from kdcore.datasets.store import PreparedStore


def _npz(path: Path, x: np.ndarray, compressed: bool = False) -> Path:
    y = np.arange(x.shape[0]) % 3
    save = np.savez_compressed if compressed else np.savez
    save(path, x_train=x[:-5], y_train=y[:-5], x_test=x[-5:], y_test=y[-5:])
    return path


@pytest.mark.parametrize(("layout", "dtype", "compressed"), [("NHWC", "uint8", False), ("NCHW", "float16", True),
                                                             ("NHW", "float32", False)])
def test_a_prepared_npz_reads_back_as_the_loader_normalizes_it(tmp_path: Path, layout: str, dtype: str,
                                                                compressed: bool) -> None:
    rng = np.random.default_rng(0)
    shape = {"NHWC": (45, 6, 7, 3), "NCHW": (45, 3, 6, 7), "NHW": (45, 6, 7)}[layout]
    x = rng.integers(0, 256, shape).astype(np.uint8) if dtype == "uint8" else rng.random(shape).astype(dtype)
    path = _npz(tmp_path / "d.npz", x, compressed)
    monkey_small = npz_mod.STREAM_WORK_BYTES
    npz_mod.STREAM_WORK_BYTES = 8 * 6 * 7 * 3 * 4  # four rows a block: the streaming crosses block edges
    try:
        seen: list[tuple[int, int]] = []
        data = PreparedStore(tmp_path / "store").prepare(path, on_progress=lambda d, t: seen.append((d, t)))
    finally:
        npz_mod.STREAM_WORK_BYTES = monkey_small
    loaded = load_dataset("npz", tmp_path, artifact=path)
    assert data.info.mean == loaded.info.mean and data.info.std == loaded.info.std
    assert data.info.input_shape == loaded.info.input_shape and data.info.num_classes == 3
    stored = np.load(tmp_path / "store" / data.key / "train_x.npy", mmap_mode="r")
    assert stored.dtype == np.dtype(dtype) and stored.shape == tuple(loaded.x_train.shape)  # kept as given
    idx = torch.tensor([7, 0, 39, 7])
    torch.testing.assert_close(data.train.batch(idx), loaded.x_train[idx], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(list(data.test.chunks(2))), loaded.x_test, rtol=0, atol=1e-6)
    assert torch.equal(data.train.labels, loaded.y_train) and seen[0] == (0, 45) and seen[-1] == (45, 45)
    again = PreparedStore(tmp_path / "store").prepare(path, on_progress=lambda d, t: seen.append((-1, -1)))
    assert again.key == data.key and (-1, -1) not in seen  # reused, not written again


def test_an_npz_is_prepared_as_given_and_bad_pixels_leave_no_store(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", np.zeros((12, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="prepared as given"):
        PreparedStore(tmp_path / "store").prepare(path, image_size=(16, 16))
    bad = np.full((12, 8, 8), 0.5, np.float32)
    bad[9, 2, 2] = np.nan  # in the test split: found while streaming, after the train split was written
    with pytest.raises(DatasetError, match="x_test is float but not within"):
        PreparedStore(tmp_path / "store").prepare(_npz(tmp_path / "nan.npz", bad))
    assert not [p for p in (tmp_path / "store").iterdir()]  # neither a store nor a .tmp-* folder


def test_inspection_streams_in_memory_that_does_not_grow_with_the_file(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, (2000, 3, 64, 64), dtype=np.uint8)  # 24.6 MB; 98 MB as float32
    path = _npz(tmp_path / "big.npz", x)
    del x
    work = npz_mod.STREAM_WORK_BYTES
    npz_mod.STREAM_WORK_BYTES = 4 * 2**20  # blocks of 4 MiB as float64 (the service's: 16 MiB)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        info = inspect_npz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        npz_mod.STREAM_WORK_BYTES = work
    assert info.train_size == 1995 and info.in_channels == 3 and info.mean is not None
    # a block's float64 copy and its uint8 source (4.5 MiB), not the 24.6 MB array (nor its float64 copies:
    # the whole-file reader held 24.6 MB plus 4096 samples at a time as float64, 400 MB)
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"
