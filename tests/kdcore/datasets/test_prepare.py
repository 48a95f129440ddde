"""kdcore.datasets.prepare and the store's writing side: decoding processes that work inside a daemonic
process (where a multiprocessing pool cannot start), progress, a bad image named, a preparation killed
mid-way (SIGKILL) leaving only a .tmp folder, stale .tmp folders removed, a race to publish."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdcore.datasets import DatasetError
from kdcore.datasets import imagefolder as imf
from kdcore.datasets.prepare import default_workers, ranges
from kdcore.datasets.store import PreparedStore

from .conftest import make_zip

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def zipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a 16 x 16 member among 10 x 12 ones: resized by the default policy, in a worker's range
    return make_zip(tmp_path_factory.mktemp("zips") / "pets.zip", n_train=16,
                    odd={"train/c1/big.png": imf_png((16, 16, 3))})


def imf_png(shape: tuple[int, ...]) -> bytes:
    from .conftest import class_image

    return class_image(1, 7, shape)


def assert_equals_loader(data: object, zipped: Path) -> None:
    info, (x_train, y_train, x_test, y_test) = imf._load(zipped)
    assert np.array_equal(data.train.rows(np.arange(len(data.train))), x_train)  # type: ignore[attr-defined]
    assert np.array_equal(data.test.rows(np.arange(len(data.test))), x_test)  # type: ignore[attr-defined]
    assert (data.info.mean, data.info.std) == (info.mean, info.std)  # type: ignore[attr-defined]


def test_ranges_and_default_workers() -> None:
    assert ranges(10, 3) == [(0, 3), (3, 6), (6, 10)] and ranges(2, 8) == [(0, 1), (1, 2)]
    n = min(os.cpu_count() or 1, 8)
    assert default_workers(10) == 0 and default_workers(10**6) == (n if n > 1 else 0)


def _prepare_in_daemon(root: str, source: str, out: str) -> None:
    me = multiprocessing.current_process()
    try:
        multiprocessing.get_context("fork").Pool(2)
        pool = "started"
    except AssertionError as e:  # "daemonic processes are not allowed to have children"
        pool = str(e)
    seen: list[tuple[int, int]] = []
    data = PreparedStore(root).prepare(source, workers=2, on_progress=lambda d, t: seen.append((d, t)))
    Path(out).write_text(json.dumps({"daemon": me.daemon, "pool": pool, "key": data.key, "seen": seen}))


def test_worker_processes_decode_inside_a_daemonic_process(zipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    p = multiprocessing.get_context("fork").Process(target=_prepare_in_daemon, daemon=True,
                                                    args=(str(tmp_path / "store"), str(zipped), str(out)))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    got = json.loads(out.read_text())
    assert got["daemon"] is True and "daemonic" in got["pool"]  # a pool would not start here
    seen = got["seen"]
    assert seen[0] == [0, 61] and seen[-1] == [61, 61] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    data = PreparedStore(tmp_path / "store").get(got["key"])
    assert data is not None
    assert_equals_loader(data, zipped)


def test_a_bad_image_is_named_and_nothing_is_published(tmp_path: Path) -> None:
    bad = make_zip(tmp_path / "bad.zip", n_train=8, odd={"test/c2/zz.png": imf_png((40, 40, 3))[:-200]})
    store = PreparedStore(tmp_path / "store")
    for workers in (2, 0):
        with pytest.raises(DatasetError, match="test/c2/zz.png"):
            store.prepare(bad, workers=workers)
    assert list((tmp_path / "store").iterdir()) == []  # no store, no .tmp folder


CHILD = """
import sys, time
from kdcore.datasets.store import PreparedStore
def hold(done, total):
    if done:
        print("decoding", flush=True)
        time.sleep(60)
PreparedStore(sys.argv[1]).prepare(sys.argv[2], workers=2, on_progress=hold)
"""


def test_a_preparation_killed_midway_leaves_only_a_tmp_folder(zipped: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(zipped)], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"decoding"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    tmp = [p for p in root.iterdir()]
    assert len(tmp) == 1 and tmp[0].name.startswith(".tmp-") and not (tmp[0] / "meta.json").exists()
    store = PreparedStore(root)
    data = store.prepare(zipped, workers=0)  # starts over; the young .tmp folder may be a live preparation
    assert_equals_loader(data, zipped)
    assert tmp[0].exists()
    old = time.time() - 2 * 3600
    os.utime(tmp[0], (old, old))
    assert store.clean_stale() == [tmp[0]] and not tmp[0].exists()
    assert store.get(data.key) is not None


def test_a_store_published_first_by_another_process_is_kept(zipped: Path, tmp_path: Path) -> None:
    store = PreparedStore(tmp_path)
    theirs = store.prepare(zipped, workers=0)
    inode = (tmp_path / theirs.key / "train_x.npy").stat().st_ino
    ours = tmp_path / f".tmp-{theirs.key}-mine"
    ours.mkdir()
    (ours / "meta.json").write_text("{}")
    store._publish(ours, theirs.key)  # the rename fails against their complete store: theirs stays
    assert (tmp_path / theirs.key / "train_x.npy").stat().st_ino == inode and store.get(theirs.key) is not None
