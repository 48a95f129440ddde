"""kdcore.datasets.store: reuse by key, the loader's arrays on the default path, the resize policy, batch()
against normalized rows, chunks, the prefetching iterator, and batches read without the whole split in memory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.datasets import imagefolder as imf
from kdcore.datasets import load_dataset
from kdcore.datasets import store as st
from kdcore.datasets.store import PreparedStore, prefetched, store_key

from .conftest import class_image, make_zip


@pytest.fixture(scope="module")
def zipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zip(tmp_path_factory.mktemp("zips") / "pets.zip")


def test_default_path_equals_the_loader_and_meta_records_it(zipped: Path, tmp_path: Path) -> None:
    data = PreparedStore(tmp_path).prepare(zipped, workers=0)
    info, (x_train, y_train, x_test, y_test) = imf._load(zipped)
    assert np.array_equal(data.train.rows(torch.arange(len(data.train))), x_train)
    assert np.array_equal(data.test.rows(torch.arange(len(data.test))), x_test)
    assert torch.equal(data.train.labels, torch.from_numpy(y_train)) and torch.equal(data.test.labels,
                                                                                     torch.from_numpy(y_test))
    assert (data.info.mean, data.info.std) == (info.mean, info.std) and data.info.mean is not None
    assert data.info.input_shape == info.input_shape == (3, 10, 12)
    loaded = load_dataset("imagefolder", tmp_path, artifact=zipped)
    assert torch.equal(data.train.batch(torch.arange(len(data.train))), loaded.x_train)
    assert torch.equal(torch.cat(list(data.test.chunks(5))), loaded.x_test)
    meta = json.loads((tmp_path / data.key / "meta.json").read_text())
    assert meta["format"] == st.FORMAT and meta["counts"] == {"train": 36, "test": 12}
    assert meta["source_sha256"] == st.file_sha256(zipped) and meta["image_size"] == [10, 12]
    assert meta["dataset"]["mean"] == list(info.mean) and meta["resize_policy"] == imf.RESIZE_STRETCH
    assert np.load(tmp_path / data.key / "train_x.npy", mmap_mode="r").dtype == np.uint8
    assert not list(tmp_path.glob(".tmp-*"))


def test_second_prepare_is_a_hit_without_decoding(zipped: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = PreparedStore(tmp_path)
    first = store.prepare(zipped, workers=0)
    assert store.get(first.key) is not None and store.get("0" * 64) is None

    def no_decode(*a: object, **k: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(st, "decode_all", no_decode)
    again = store.prepare(zipped, workers=0)
    assert again.key == first.key and torch.equal(again.train.batch(torch.arange(5)), first.train.batch(
        torch.arange(5)))
    (tmp_path / first.key / "meta.json").unlink()  # incomplete: not a store
    assert store.get(first.key) is None


def test_key_changes_with_image_size_channels_and_source(zipped: Path, tmp_path: Path) -> None:
    sha = st.file_sha256(zipped)
    keys = {store_key(sha), store_key(sha, (8, 8)), store_key(sha, (8, 10)), store_key(sha, None, 1),
            store_key("0" * 64)}
    assert len(keys) == 5 and store_key(sha, (8, 8)) == store_key(sha, (8, 8))
    store = PreparedStore(tmp_path)
    small = store.prepare(zipped, image_size=(8, 8), workers=0)
    gray = store.prepare(zipped, channels=1, workers=0)
    assert small.key == store_key(sha, (8, 8)) and small.train.shape == (36, 3, 8, 8)
    assert small.info.image_size == (8, 8) and gray.train.shape == (36, 1, 10, 12) and gray.info.in_channels == 1
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_cover_center_crop_keeps_the_aspect(tmp_path: Path) -> None:
    # 20 x 40 (H x W), left half dark, right half bright; to (10, 10): scaled to 10 x 20, center 10 x 10 cropped
    img = np.zeros((20, 40), dtype=np.uint8)
    img[:, 20:] = 200
    img[:, 10:20] = 50
    path = tmp_path / "wide.png"
    Image.fromarray(img).save(path)
    def opener(name: str):  # noqa: ANN202
        return open(path, "rb")  # noqa: SIM115

    out = imf.decode_member(opener, "wide.png", "L", (10, 10), imf.RESIZE_COVER_CROP)
    assert out.shape == (1, 10, 10)
    assert abs(int(out[0, 5, 1]) - 50) <= 2 and abs(int(out[0, 5, 8]) - 200) <= 2  # the crop is the middle
    stretched = imf.decode_member(opener, "wide.png", "L", (10, 10), imf.RESIZE_STRETCH)
    assert int(stretched[0, 5, 1]) < 10  # stretched: the dark quarter still shows


def test_batch_equals_normalized_rows_in_idx_order(zipped: Path, tmp_path: Path) -> None:
    data = PreparedStore(tmp_path).prepare(zipped, workers=0)
    x = np.load(tmp_path / data.key / "train_x.npy").astype(np.float32) / 255.0
    m = np.array(data.info.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.array(data.info.std, dtype=np.float32).reshape(1, -1, 1, 1)
    want = torch.from_numpy((x - m) / s)
    gen = torch.Generator().manual_seed(0)
    for idx in (torch.randperm(36, generator=gen)[:10], torch.tensor([5, 3, 5, 0, 35, 3]), torch.tensor([7]),
                torch.tensor([], dtype=torch.int64)):
        got = data.train.batch(idx)
        assert got.dtype == torch.float32 and got.shape == (len(idx), 3, 10, 12)
        assert torch.allclose(got, want[idx], atol=1e-5)
    with pytest.raises(IndexError):
        data.train.batch(torch.tensor([36]))
    assert data.train.digest() != data.test.digest() and data.key in data.train.digest()
    moved = data.to("cpu")
    assert torch.equal(moved.train.batch(torch.arange(3)), data.train.batch(torch.arange(3)))
    chunks = list(data.train.chunks(8))
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 4] and torch.allclose(torch.cat(chunks), want, atol=1e-5)


def test_prefetched_yields_direct_reads_and_stops_cleanly(zipped: Path, tmp_path: Path) -> None:
    split = PreparedStore(tmp_path).prepare(zipped, workers=0).train
    order = torch.randperm(36, generator=torch.Generator().manual_seed(1))
    got = list(prefetched(split, order, 7))
    assert [len(i) for i, _ in got] == [7, 7, 7, 7, 7]  # 36 = 5 x 7 + 1: the lone last sample is dropped
    for i, x in got:
        assert torch.equal(x, split.batch(i))
    assert torch.equal(torch.cat([i for i, _ in got]), order[:35])
    assert [len(i) for i, _ in prefetched(split, order, 7, drop_last_single=False)][-1] == 1
    assert [len(i) for i, _ in prefetched(split, order, 100)] == [36]
    gen = prefetched(split, order, 2)
    next(gen)
    gen.close()  # the consumer stops early: the reader thread ends, nothing left running
    assert not [t for t in __import__("threading").enumerate() if t.name == "prefetch"]

    class Broken:
        def batch(self, idx: torch.Tensor) -> torch.Tensor:
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(Broken(), order, 4))  # type: ignore[arg-type]


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status")


def test_batches_do_not_read_the_whole_split(tmp_path: Path) -> None:
    n, shape = 24000, (3, 64, 64)  # 295 MB of uint8 (1.2 GB as float32), zeros, written directly
    key = "f" * 64
    d = tmp_path / key
    d.mkdir()
    for split, count in (("train", n), ("test", 10)):
        np.lib.format.open_memmap(d / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=(count, *shape)).flush()
        np.save(d / f"{split}_y.npy", np.zeros(count, dtype=np.int64))
    info = imf.DatasetInfo("imagefolder", 2, 3, (128, 128), (0.5,) * 3, (0.25,) * 3, ("a", "b"), n, 10)
    (d / "meta.json").write_text(json.dumps({"format": st.FORMAT, "dataset": info.describe(),
                                             "counts": {"train": n, "test": 10}}))
    split = PreparedStore(tmp_path).get(key).train
    before = _rss_anon_kb()
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        x = split.batch(torch.randint(0, n, (64,), generator=gen))
    assert float(x[0, 0, 0, 0]) == -2.0
    for _, x in prefetched(split, torch.randperm(n, generator=gen)[:640], 64):
        assert x.shape == (64, *shape)
    for x, _ in zip(split.chunks(128), range(10), strict=False):
        assert x.shape == (128, *shape)
    grown_mb = (_rss_anon_kb() - before) / 1024  # batches of 3 MB as float32, and the allocator's keep
    assert grown_mb < 64, f"anonymous memory grew {grown_mb:.0f} MB reading batches of a 295 MB split"


def test_a_store_of_another_format_is_not_read(zipped: Path, tmp_path: Path) -> None:
    store = PreparedStore(tmp_path)
    data = store.prepare(zipped, workers=0)
    meta = tmp_path / data.key / "meta.json"
    meta.write_text(meta.read_text().replace(f'"format": {st.FORMAT}', '"format": 999'))
    assert store.get(data.key) is None
    again = store.prepare(zipped, workers=0)  # the unreadable folder is replaced
    assert store.get(again.key) is not None


def test_class_image_is_learnable() -> None:
    assert class_image(0, 1, (4, 4, 3)) != class_image(1, 1, (4, 4, 3))
