"""Image-folder zips through HTTP: the API checks them structurally (names, image headers, a few sample
decodes) and never decodes the dataset, so its memory does not grow with the images; bad zips are 422s
naming the member at fault."""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.settings import Settings
from distillery.redis_server import free_port
from tests.harness import api_argv, clean_env, process, wait_for

SIDE = 2000  # pixels: one 2000x2000 RGB image is 48 MB as float32, a few KB as a PNG of a smooth gradient
N_TRAIN, N_TEST = 14, 2  # per class, two classes: 32 images, 1.5 GB as float32
GROWTH_LIMIT = 150 * 2**20


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _small_zip(**extra: bytes | None) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in (("train", 3), ("test", 1)):
            for cls in ("cat", "dog"):
                for i in range(n):
                    zf.writestr(f"{split}/{cls}/{i}.png", _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
        for name, data in extra.items():
            if data is None:
                zf.mkdir(name)
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def _large_zip() -> bytes:
    """Two classes of 2000x2000 RGB PNGs: smooth gradients (class "ramp") and solid colours ("flat")."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    images = {
        "ramp": [_png(np.stack([np.broadcast_to(ramp[:, None], (SIDE, SIDE)), np.broadcast_to(ramp, (SIDE, SIDE)),
                                np.full((SIDE, SIDE), k * 60.0)], -1).astype(np.uint8)) for k in range(2)],
        "flat": [_png(np.full((SIDE, SIDE, 3), (k * 90, 40, 200), dtype=np.uint8)) for k in range(2)],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            for cls, pngs in images.items():
                for i in range(n):
                    zf.writestr(f"big/{split}/{cls}/{i:03d}.png", pngs[i % 2])
    return buf.getvalue()


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_bad_zips_are_422_naming_the_member(redis_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path))
    cases = {
        "corrupt image": (_small_zip(**{"train/dog/7.png": b"\x89PNG\r\n\x1a\n broken"}), "'train/dog/7.png'"),
        "empty class": (_small_zip(**{"train/bird/": None}), "'train/bird/' holds no images"),
    }
    with TestClient(app) as http:
        for case, (body, named) in cases.items():
            r = http.post("/v1/artifacts", files={"file": ("images.zip", body)})
            assert r.status_code == 422 and named in r.json()["detail"], (case, r.text)
            assert r.json()["errors"][0]["loc"] == ["body", "file"]
        r = http.post("/v1/artifacts", files={"file": ("images.zip", _small_zip())})
        assert r.status_code == 201, r.text
        assert r.json()["meta"]["dataset"]["mean"] is None
    uploads = tmp_path / "artifacts" / "uploads"
    assert len(list(uploads.iterdir())) == 1  # the refused ones left nothing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_upload_whose_float32_form_dwarfs_the_api_memory_bound(redis_url: str, tmp_path: Path) -> None:
    """The API (uvicorn in a subprocess, as the project starts it) takes a 32-image zip of 2000x2000 PNGs
    (small as a zip, 1.5 GB as float32) while its peak resident memory grows by less than 150 MB.

    The peak is Linux's VmHWM in /proc/<pid>/status; writing 5 to /proc/<pid>/clear_refs just before the
    upload resets it to the current resident size (a process may do this to one it owns), so VmHWM after
    the upload minus VmRSS before it is the growth the upload caused. A small upload first warms the
    lazy imports (Pillow's plugins) so that they are not counted.
    """
    env = clean_env({"KD_REDIS_URL": redis_url, "KD_DATA_DIR": str(tmp_path / "data")})
    port = free_port()
    body = _large_zip()
    decoded = 2 * (N_TRAIN + N_TEST) * 3 * SIDE * SIDE * 4
    assert decoded > 1024**3 and len(body) < 2 * 2**20
    with process(api_argv(port), env, tmp_path / "api.log") as api, httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        wait_for("the API", lambda: http.get("/healthz").status_code == 200, timeout=90, every=0.2)
        assert http.post("/v1/artifacts", files={"file": ("warm.zip", _small_zip())}).status_code == 201
        clear_refs = Path(f"/proc/{api.pid}/clear_refs")
        try:
            clear_refs.write_text("5")
        except OSError as e:
            pytest.skip(f"cannot reset the peak resident size ({clear_refs}: {e})")
        before = _status_kb(api.pid, "VmRSS")
        r = http.post("/v1/artifacts", files={"file": ("photos.zip", body)})
        peak = _status_kb(api.pid, "VmHWM")
    assert r.status_code == 201, r.text
    growth = (peak - before) * 1024
    print(f"API peak growth {growth / 2**20:.1f} MiB for an upload of {len(body) / 2**20:.1f} MiB "
          f"({decoded / 2**30:.2f} GiB as float32)")
    assert growth < GROWTH_LIMIT, f"the API's peak resident memory grew by {growth / 2**20:.0f} MiB"
    meta = r.json()["meta"]["dataset"]
    assert meta["class_names"] == ["flat", "ramp"] and meta["num_classes"] == 2
    assert (meta["train_size"], meta["test_size"]) == (2 * N_TRAIN, 2 * N_TEST)
    assert meta["image_size"] == [SIDE, SIDE] and meta["in_channels"] == 3 and meta["mean"] is None
