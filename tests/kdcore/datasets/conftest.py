"""Tiny image-folder zips made by the tests: seeded, learnable classes (each class its own pattern plus noise)."""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, seed: int, shape: tuple[int, ...]) -> bytes:
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    base = np.zeros(shape, dtype=np.float64)
    base[: h // 2] += 120.0 if label % 2 else 0.0  # class 1: bright top half; class 2: bright left half
    base[:, : w // 2] += 120.0 if label // 2 % 2 else 0.0
    img = np.clip(base + rng.normal(60, 25, shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path: Path, n_train: int = 12, n_test: int = 4, classes: int = 3,
             shape: tuple[int, ...] = (10, 12, 3), odd: dict[str, bytes] | None = None) -> Path:
    """train/c<k>/<i>.png and test/c<k>/<i>.png; ``odd`` adds or replaces members (another size, bad bytes)."""
    entries = {f"{split}/c{k}/{i:03d}.png": class_image(k, zlib.crc32(f"{split}{k}{i}".encode()), shape)
               for split, n in (("train", n_train), ("test", n_test)) for k in range(classes) for i in range(n)}
    entries.update(odd or {})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path
