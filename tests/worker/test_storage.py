"""The shared storage (worker/storage.py, KD_STORAGE_URL) between hosts, on a real Redis: an upload published
by the API host, prepared and published by one worker host, is trained on by another host that fetches the
upload and the prepared shards (mapped from its own disk, not decoded again) and publishes the student, which
a third host serves. Unset, nothing is copied."""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from kdcore.datasets.store import store_key
from kdcore.digests import file_sha256
from worker.artifacts import ArtifactStore
from worker.config import WorkerSettings
from worker.lifecycle import Lifecycle
from worker.preparation import Preparations, run_preparation
from worker.runner import execute
from worker.storage import Storage
from worker.store import JobStore


def _zip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 16), ("test", 4)):
            for label, cls in enumerate(("a", "b")):
                for i in range(n):
                    img = np.random.default_rng(i + 50 * label).integers(0, 60, (8, 8), dtype=np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img + np.uint8(150 * label)).save(buf, "PNG")
                    zf.writestr(f"{split}/{cls}/{i}.png", buf.getvalue())
    return path


def test_unset_storage_copies_nothing(tmp_path: Path) -> None:
    s = Storage(None)
    f = tmp_path / "x.bin"
    assert not s.shared and not s.fetch(f, "uploads", "x.bin")
    f.write_bytes(b"1")
    s.publish(f, "uploads", "x.bin")
    assert s.fetch(f, "uploads", "x.bin") and not s.fetch_dir(tmp_path / "d", "prepared", "k")


def test_a_folder_counts_as_published_only_once_its_last_file_is(tmp_path: Path) -> None:
    s = Storage((tmp_path / "shared").as_uri())
    src = tmp_path / "src"
    src.mkdir()
    (src / "train_x.npy").write_bytes(b"rows")
    s.publish(src / "train_x.npy", "prepared", "k", "train_x.npy")  # a publisher that died before meta.json
    assert not s.fetch_dir(tmp_path / "local" / "k", "prepared", "k")
    (src / "meta.json").write_text("{}")
    s.publish_dir(src, "prepared", "k")
    assert s.fetch_dir(tmp_path / "local" / "k", "prepared", "k")
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["k"]  # no .tmp-* left behind
    assert (tmp_path / "local" / "k" / "train_x.npy").read_bytes() == b"rows"


def test_hosts_share_uploads_prepared_stores_and_outputs(redis_client: redis.Redis, redis_url: str,
                                                         tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    url = shared.as_uri()
    store = JobStore(redis_client)
    # host A (API and a worker): the upload passes its checks and is published, then prepared and published
    upload = _zip(tmp_path / "a" / "artifacts" / "uploads" / "art_s.zip")
    host_a = WorkerSettings(redis_url=redis_url, data_dir=tmp_path / "a", storage_url=url)
    ArtifactStore(host_a.artifacts, Storage(url)).publish_upload(upload)
    store.put_artifact({"id": "art_s", "tenant": "t", "path": str(upload), "format": "imagefolder",
                        "sha256": file_sha256(upload)})
    key = store_key(file_sha256(upload))
    Preparations(store).request("art_s", key, "imagefolder", None, None)
    assert run_preparation("art_s", key, host_a, store) == "ready"
    assert (shared / "uploads" / "art_s.zip").is_file() and (shared / "prepared" / key / "meta.json").is_file()
    shutil.rmtree(tmp_path / "a")  # host A is gone: its disk is nobody's

    # host B trains on the upload: fetched, and the prepared shards copied to its own disk, not decoded
    host_b = WorkerSettings(redis_url=redis_url, data_dir=tmp_path / "b", storage_url=url)
    spec = {"student": {"architecture": "mlp", "kwargs": {"hidden": [8]}},
            "dataset": {"name": "imagefolder", "artifact": "art_s"},
            "distillation": {"method": "none"}, "training": {"epochs": 1, "batch_size": 16}}
    rec, _ = Lifecycle(store, lambda job_id, queue: None).submit("t", spec, "cpu")
    assert execute(rec["id"], host_b, store) == "succeeded", store.get_job(rec["id"])["error"]
    assert not [e for e in store.events(rec["id"]) if e["data"].get("phase") == "prepare"]
    assert (tmp_path / "b" / "prepared" / key / "train_x.npy").is_file()  # the local shard cache, mapped
    assert (tmp_path / "b" / "artifacts" / "uploads" / "art_s.zip").is_file()
    published = shared / "jobs" / rec["id"] / "student.safetensors"
    assert published.is_file() and (shared / "jobs" / rec["id"] / "report.json").is_file()
    assert not (shared / "jobs" / rec["id"] / "checkpoint.pt").exists()  # scratch stays local

    # host C (another API) serves the download from the shared storage
    served = ArtifactStore(tmp_path / "c" / "artifacts", Storage(url)).job_output(rec["id"], "student.safetensors")
    assert served is not None and served.read_bytes() == published.read_bytes()
