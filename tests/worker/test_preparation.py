"""Preparing an upload under its store key's lock (worker/preparation.py), on a real Redis: two workers that
need the same store at once decode it once; a failed or interrupted preparation says so in its record."""
from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from kdcore.datasets.store import PreparedStore, store_key
from kdcore.digests import file_sha256
from worker import keys
from worker.config import WorkerSettings
from worker.preparation import LockedPreparer, Preparations, PrepState, run_preparation
from worker.store import JobStore


def _png(seed: int, label: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 60, (12, 12, 3), dtype=np.uint8) + np.uint8(120 * label)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _zip(path: Path, broken: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 8), ("test", 2)):
            for label, cls in enumerate(("a", "b")):
                for i in range(n):
                    zf.writestr(f"{split}/{cls}/{i}.png", _png(i + 100 * label, label))
        if broken:
            zf.writestr(broken, _png(7, 1)[:-200])  # header fine, pixel data cut short
    return path


def test_two_concurrent_preparations_of_one_key_decode_once(redis_client: redis.Redis, tmp_path: Path) -> None:
    source = _zip(tmp_path / "pets.zip")
    preps = Preparations(JobStore(redis_client), lock_ttl_s=10)
    waiting = threading.Event()  # the second worker found the lock held
    completed: list[int] = []  # one entry per full decode
    results: dict[int, object] = {}

    def progress(done: int, total: int) -> None:
        if done == 0:  # the holder decodes only once the other is waiting: without the lock, nobody would wait
            waiting.wait(timeout=10)
        if done == total:
            completed.append(total)

    def work(i: int) -> None:
        preparer = LockedPreparer(PreparedStore(tmp_path / "prepared"), preps, artifact="art_x", fmt="imagefolder",
                                  on_wait=waiting.set)
        results[i] = preparer.prepare(source, image_size=(8, 8), on_progress=progress)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert waiting.is_set() and completed == [20], completed  # one decode of the 20 images, one wait
    assert results[0].key == results[1].key and results[0].path == results[1].path  # type: ignore[attr-defined]
    rec = preps.get(store_key(file_sha256(source), (8, 8)), artifact="art_x")
    assert rec is not None and rec["state"] == PrepState.READY and rec["counts"] == {"train": 16, "test": 4}
    assert rec["shape"] == [3, 8, 8] and rec["bytes"] > 20 * 3 * 8 * 8 and rec["progress"]["done"] == 20
    assert not redis_client.exists(keys.prepare_lock(rec["key"]))  # released


def test_a_failed_preparation_names_the_member_and_can_be_asked_again(redis_client: redis.Redis, redis_url: str,
                                                                     tmp_path: Path) -> None:
    source = _zip(tmp_path / "late.zip", broken="train/b/bad.png")
    store = JobStore(redis_client)
    store.put_artifact({"id": "art_late", "tenant": "t", "path": str(source), "format": "imagefolder",
                        "sha256": file_sha256(source)})
    preps = Preparations(store)
    key = store_key(file_sha256(source))
    _, send = preps.request("art_late", key, "imagefolder", None, None)
    assert send and preps.get(key)["state"] == PrepState.PENDING
    assert run_preparation("art_late", key, WorkerSettings(redis_url=redis_url, data_dir=tmp_path), store) == "error"
    rec = preps.get(key, artifact="art_late")
    assert rec["state"] == PrepState.ERROR and "'train/b/bad.png' cannot be decoded" in rec["error"], rec
    assert not any(p for p in (tmp_path / "prepared").iterdir() if not p.name.startswith(".tmp"))
    assert preps.request("art_late", key, "imagefolder", None, None)[1]  # a failed one is sent again


def test_a_preparation_whose_worker_died_reads_interrupted(redis_client: redis.Redis) -> None:
    preps = Preparations(JobStore(redis_client), lock_ttl_s=5)
    preps.set("k1", state=PrepState.PREPARING.value)
    with preps.locked("k1"):
        assert preps.get("k1")["state"] == PrepState.PREPARING  # its worker holds the lock
        assert not preps.request("art_y", "k1", "imagefolder", None, None)[1]  # no second worker sent
    assert preps.get("k1")["state"] == PrepState.INTERRUPTED  # lock gone, record not finished
    assert preps.request("art_y", "k1", "imagefolder", None, None)[1]
    assert preps.get("k1", artifact="art_other") is None  # another upload never asked for it


def test_waiting_for_a_lock_stops_when_the_job_is_cancelled(redis_client: redis.Redis) -> None:
    from kdcore.errors import Cancelled

    preps = Preparations(JobStore(redis_client), lock_ttl_s=5)
    with preps.locked("k2"), pytest.raises(Cancelled), preps.locked("k2", should_stop=lambda: True):
        pass
