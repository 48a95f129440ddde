"""`POST /v1/datasets/{artifact}/prepare` through the running service (tests/harness.py: Redis, a Celery
worker, the API over HTTP): a worker prepares the upload ahead of its jobs, the state is followed over HTTP,
and a job asking the same way reuses the store without a `prepare` phase."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save

from tests.harness import Stack, wait_for
from tests.helpers import npz_bytes, spec


def _zip(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 24), ("test", 6)):
            for label in range(3):
                for i in range(n):
                    img = rng.integers(0, 50, (14, 18, 3), dtype=np.uint8) + np.uint8(90 * label)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, "PNG")
                    zf.writestr(f"{split}/c{label}/{i}.png", buf.getvalue())
    return path


def test_prepare_an_upload_ahead_of_its_jobs(service: Stack, tmp_path: Path) -> None:
    archive = _zip(tmp_path / "shapes.zip")
    with service.client() as http:
        art = http.post("/v1/artifacts", files={"file": ("shapes.zip", archive.read_bytes())}).json()["id"]
        r = http.post(f"/v1/datasets/{art}/prepare", json={"image_size": [16, 16], "channels": 1})
        assert r.status_code == 202, r.text
        first = r.json()
        assert first["state"] in ("pending", "preparing", "ready") and r.headers["location"] == first["links"]["self"]
        assert first["image_size"] == [16, 16] and first["channels"] == 1

        def ready() -> dict | None:
            got = http.get(r.headers["location"]).json()
            assert got["state"] not in ("error", "interrupted"), got
            return got if got["state"] == "ready" else None

        done = wait_for("the preparation", ready, timeout=120, every=0.2)
        assert done["key"] == first["key"] and done["counts"] == {"train": 72, "test": 18}
        assert done["shape"] == [1, 16, 16] and done["bytes"] >= 90 * 16 * 16 and done["worker"]
        assert done["progress"] == {"done": 90, "total": 90, "fraction": 1.0}
        again = http.post(f"/v1/datasets/{art}/prepare", json={"image_size": [16, 16], "channels": 1})
        assert again.status_code == 200 and again.json()["state"] == "ready"  # nothing to start
        listed = http.get(f"/v1/datasets/{art}/prepare").json()
        assert listed["artifact"] == art and [p["key"] for p in listed["data"]] == [done["key"]]

        job = service.wait(service.submit(spec(
            student={"architecture": "mlp", "kwargs": {"hidden": [16]}},
            dataset={"name": "imagefolder", "artifact": art, "image_size": [16, 16], "channels": 1},
            training={"epochs": 1, "batch_size": 32, "lr": 0.05})))
        assert job["status"] == "succeeded", job["error"]
        assert not [e for e in service.events(job["id"]) if e["data"].get("phase") == "prepare"]  # reused

        # the default size (an empty body) is another store, listed beside the first
        default = http.post(f"/v1/datasets/{art}/prepare")
        assert default.status_code == 202 and default.json()["image_size"] is None, default.text
        wait_for("the second preparation", lambda: http.get(default.headers["location"]).json()["state"] == "ready",
                 timeout=120, every=0.2)
        listed = http.get(f"/v1/datasets/{art}/prepare").json()["data"]
        assert len(listed) == 2 and all(p["state"] == "ready" for p in listed)
        assert {tuple(p["shape"]) for p in listed} == {(1, 16, 16), (3, 14, 18)}

        # an .npz is prepared too, as given (streamed, its pixels in their own type)
        npz = http.post("/v1/artifacts", files={"file": ("d.npz", npz_bytes())}).json()["id"]
        r = http.post(f"/v1/datasets/{npz}/prepare")
        assert r.status_code == 202, r.text
        got = wait_for("the npz", lambda: (g := http.get(r.headers["location"]).json())["state"] == "ready" and g,
                       timeout=120, every=0.2)
        assert got["counts"] == {"train": 20, "test": 6} and got["shape"] == [1, 8, 8]

        # bad asks change nothing
        ckpt = http.post("/v1/artifacts", files={"file": ("t.safetensors", save({"w": torch.zeros(2, 2)}))}).json()
        for path, body, status, loc in (("/v1/datasets/art_nope/prepare", {}, 404, None),
                                        (f"/v1/datasets/{ckpt['id']}/prepare", {}, 422, ["path", "artifact"]),
                                        (f"/v1/datasets/{npz}/prepare", {"image_size": [16, 16]}, 422,
                                         ["body", "image_size"]),
                                        (f"/v1/datasets/{art}/prepare", {"channels": 2}, 422, ["body", "channels"]),
                                        (f"/v1/datasets/{art}/prepare", {"image_size": [4, 4]}, 422,
                                         ["body", "image_size", 0])):
            bad = http.post(path, json=body)
            assert bad.status_code == status, bad.text
            assert loc is None or bad.json()["errors"][0]["loc"] == loc, bad.json()
        assert http.get("/v1/datasets/art_nope/prepare").status_code == 404
        assert http.get(f"/v1/datasets/{ckpt['id']}/prepare").status_code == 422
        assert http.get(f"/v1/datasets/{art}/prepare/{'0' * 64}").status_code == 404
        assert len(http.get(f"/v1/datasets/{art}/prepare").json()["data"]) == 2
