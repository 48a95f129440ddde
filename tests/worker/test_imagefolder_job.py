"""An uploaded image folder whose image only fails when fully decoded (past the few samples the API
decodes at upload) fails its job with `bad_dataset`, naming the member."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from worker.config import WorkerSettings
from worker.lifecycle import Lifecycle
from worker.runner import execute
from worker.store import JobStore


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_an_image_that_fails_to_decode_fails_the_job_naming_it(redis_client: redis.Redis, redis_url: str,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "art_late.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for split, n in (("train", 6), ("test", 1)):
            for cls in ("cat", "dog"):
                for i in range(n):
                    zf.writestr(f"pets/{split}/{cls}/{i}.png", _png(i))
        zf.writestr("pets/train/dog/5.png", _png(5)[:-300])  # header fine, pixel data cut short
    store = JobStore(redis_client)
    store.put_artifact({"id": "art_late", "tenant": "t", "path": str(path), "format": "imagefolder"})
    spec = {"student": {"architecture": "mlp", "kwargs": {"hidden": [8]}},
            "dataset": {"name": "imagefolder", "artifact": "art_late"},
            "distillation": {"method": "none"}, "training": {"epochs": 1}}
    rec, _ = Lifecycle(store, lambda job_id, queue: None).submit("t", spec, "cpu")
    assert execute(rec["id"], WorkerSettings(redis_url=redis_url, data_dir=tmp_path), store) == "failed"
    err = store.get_job(rec["id"])["error"]
    assert err["code"] == "bad_dataset" and "'pets/train/dog/5.png' cannot be decoded" in err["message"], err
