"""A prepared dataset store: each image-folder upload decoded once into memory-mapped uint8 arrays on disk,
at a chosen resolution, reused by every later job. An .npz upload is prepared too, as given: its pixels
streamed into the same layout in their own type (uint8, or float16/32/64: no rounding), in [0, 1] for
floats (`kdcore.datasets.npz.prepare_npz`).

Layout, one folder per key under the store's root::

    <root>/<key>/meta.json      format, DatasetInfo.describe() (mean/std of the train split), counts,
                                image size, channels, resize policy, source sha256, created
    <root>/<key>/train_x.npy    uint8 N,C,H,W (np.lib.format.open_memmap; read with np.load(mmap_mode="r"))
    <root>/<key>/train_y.npy    int64 N
    <root>/<key>/test_x.npy, test_y.npy

key = sha256 over (FORMAT, the source's sha256, the requested image size or "most-common", the requested
channels or "auto", the resize policy name): the same upload asked the same way is decoded once.

Resize policy. ``image_size=None`` (default): the train split's most common size; an image of another size
is resized to it, bilinear, aspect not kept: the loader's policy (`load_imagefolder`), and for data of one
size the very same arrays. ``image_size=(H, W)``: each image is scaled, aspect kept, bilinear, to the
smallest size covering (H, W) (for a square target: its shorter side becomes the target's side), then
center-cropped to (H, W).

Atomic and crash-safe: a preparation writes into ``<root>/.tmp-<key>-<random>/``, fsyncs the files, and
renames the folder to ``<root>/<key>``; readers only ever open ``<root>/<key>``. If another process got
there first, its store is kept and ours removed. A preparation killed mid-way leaves a ``.tmp-*`` folder
that no reader opens; the next preparation starts over and removes ``.tmp-*`` folders untouched for an
hour (STALE_S; a running preparation touches its own while it waits).

Reading: `PreparedSplit.batch(idx)` takes the rows from the memmap in sorted index order (page cache, no
Python copy of the split) and converts uint8 to normalized float32 on the split's device.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcore.digests import file_sha256

from ._common import channel_stats
from .base import DatasetInfo
from .errors import DatasetError
from .imagefolder import RESIZE_COVER_CROP, RESIZE_STRETCH, _scanned
from .npz import prepare_npz
from .prepare import SPLITS, ProgressFn, decode_all, default_workers

FORMAT = 1
STALE_S = 3600.0  # a .tmp-* folder untouched this long belongs to a preparation that died
STATS_CHUNK_BYTES = 16 * 2**20  # float64 working set of the train split's mean/std
PREFETCH_DEPTH = 2
PIXEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "float16", "float32", "float64"))


def resize_policy(image_size: tuple[int, int] | None) -> str:
    return RESIZE_STRETCH if image_size is None else RESIZE_COVER_CROP


def store_key(source_sha256: str, image_size: tuple[int, int] | None = None, channels: int | None = None) -> str:
    parts = {"format": FORMAT, "source": source_sha256,
             "image_size": "most-common" if image_size is None else [int(image_size[0]), int(image_size[1])],
             "channels": "auto" if channels is None else int(channels), "resize": resize_policy(image_size)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class PreparedSplit:
    """One split (train or test) of a prepared store: rows read from the memmap, normalized on ``device``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], key: str,
                 name: str, device: torch.device | str = "cpu"):
        self._x, self._y = x, y  # x: the memmap (uint8, or an npz's floats), never read whole; y: int64, in memory
        self._scale = 255.0 if x.dtype == np.uint8 else 1.0  # floats are stored in [0, 1]
        self.key, self.name, self.device = key, name, torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(self.device)
        self._m = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._s = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self._x.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._x.shape)

    def rows(self, idx: torch.Tensor | np.ndarray) -> np.ndarray:
        """The uint8 rows at idx (in idx's order, repeats allowed), read from the memmap in sorted order."""
        i = idx.detach().to("cpu", torch.int64).numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        i = i.astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if i.size and (i.min() < -n or i.max() >= n):
            raise IndexError(f"index out of range for split {self.name!r} of {n} rows")
        i = np.where(i < 0, i + n, i)
        order = np.argsort(i, kind="stable")
        got = np.asarray(np.take(self._x, i[order], axis=0))
        out = np.empty_like(got)
        out[order] = got
        return out

    def normalized(self, rows: np.ndarray) -> torch.Tensor:
        """NCHW rows -> float32 (x / 255 - mean) / std on the split's device (converted there); float rows
        (an npz's, in [0, 1]) are not divided."""
        t = torch.from_numpy(np.ascontiguousarray(rows))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        else:
            t = t.to(self.device)
        t = t.to(torch.float32)
        return (t.div_(self._scale) if self._scale != 1.0 else t).sub_(self._m).div_(self._s)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.normalized(self.rows(idx))

    def head(self, n: int) -> torch.Tensor:
        return self.normalized(np.array(self._x[:n]))

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
        """An epoch's `steps` batches of `order`, each read by a background thread while the previous one
        trains (`prefetched`); the reader stops when the epoch's iterator is dropped."""
        for _, x in itertools.islice(prefetched(self, order, batch_size), steps):
            yield x

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive normalized batches of ``size`` rows (the last may be shorter), in order."""
        for start in range(0, len(self), max(1, int(size))):
            yield self.normalized(np.array(self._x[start:start + size]))

    def digest(self) -> str:
        """Content identity for the teacher-output cache: the store key (content, size, policy) and the split."""
        return f"prepared-{self.key}:{self.name}"

    def to(self, device: torch.device | str) -> PreparedSplit:
        return PreparedSplit(self._x, self._y, self.mean, self.std, self.key, self.name, device)


class _End:
    pass


@dataclasses.dataclass
class _Failed:
    error: BaseException


def prefetched(split: PreparedSplit, order: torch.Tensor, batch_size: int,
               drop_last_single: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(idx, x) for consecutive batches of ``order``, x read by a background thread while the caller computes.

    Batches of min(batch_size, n); with drop_last_single a final batch of one sample (which breaks batch
    norm in training mode) is dropped, as `kdcore.optim.steps_per_epoch` counts. idx is a slice of
    ``order`` on its device; the reads use one CPU copy of order, taken once. At most PREFETCH_DEPTH batches
    wait in the queue; closing the generator (a consumer that stops early) stops and joins the thread.
    """
    n = int(order.numel())
    if n == 0:
        return
    bs = max(1, min(int(batch_size), n))
    starts = list(range(0, n, bs))
    if drop_last_single and bs > 1 and n % bs == 1:
        starts.pop()
    cpu_order = order.detach().to("cpu", torch.int64)
    q: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for s in starts:
                if stop.is_set() or not put((s, split.batch(cpu_order[s:s + bs]))):
                    return
            put(_End())
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failed(e))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            s, x = item
            yield order[s:s + bs], x
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


@dataclasses.dataclass
class PreparedData:
    """A prepared dataset: its info (mean/std of the train split) and both splits."""

    info: DatasetInfo
    train: PreparedSplit
    test: PreparedSplit
    key: str
    path: Path

    def to(self, device: torch.device | str) -> PreparedData:
        return dataclasses.replace(self, train=self.train.to(device), test=self.test.to(device))


def _write_meta(tmp: Path, meta: dict[str, Any]) -> None:
    """meta.json last, then every file and the folder fsynced: what is renamed into place is complete."""
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PreparedStore:
    """Prepared datasets under ``root`` (the worker hands the folder in; kdcore reads no setting)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str, device: torch.device | str = "cpu") -> PreparedData | None:
        """The store under ``key``, or None when it is missing, incomplete or of another format."""
        d = self.path(key)
        try:
            meta = json.loads((d / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                return None
            info = DatasetInfo.from_description(meta["dataset"])
            splits = {}
            for name in SPLITS:
                x = np.load(d / f"{name}_x.npy", mmap_mode="r")
                y = np.load(d / f"{name}_y.npy")
                if x.dtype not in PIXEL_DTYPES or x.shape[0] != y.shape[0] or x.shape[0] != meta["counts"][name]:
                    return None
                splits[name] = PreparedSplit(x, y, info.mean, info.std, key, name, device)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return PreparedData(info, splits["train"], splits["test"], key, d)

    def clean_stale(self, older_than_s: float = STALE_S) -> list[Path]:
        """Removes ``.tmp-*`` folders untouched for ``older_than_s`` (left by preparations that died)."""
        removed = []
        now = time.time()
        for p in self.root.glob(".tmp-*") if self.root.is_dir() else []:
            try:
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
            except OSError:
                continue
        return removed

    def prepare(self, source: Path | str, *, image_size: tuple[int, int] | None = None,
                channels: int | None = None, workers: int | None = None, on_progress: ProgressFn | None = None,
                source_sha256: str | None = None, device: torch.device | str = "cpu") -> PreparedData:
        """The prepared store of an image-folder zip (or folder): reused when present, else decoded once.

        image_size: (H, W), or None for the train split's most common size (see the module's resize
        policy). channels: 1 or 3, or None for 1 when every image is grayscale. workers: decoding processes
        (None: min(cpu count, 8), none for small data; 0: in this process). on_progress(done, total) as
        images are decoded. Raises DatasetError naming a bad member."""
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (H, W) of positive ints, not {image_size!r}")
        source = Path(source)
        npz = source.suffix.lower() == ".npz"
        if npz and (image_size is not None or channels is not None):
            raise DatasetError("an .npz upload is prepared as given: image_size and channels apply to image folders")
        sha = source_sha256 or file_sha256(source)
        key = store_key(sha, image_size, channels)
        found = self.get(key, device)
        if found is not None:
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_stale()
        tmp = self.root / f".tmp-{key}-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            if npz:
                self._build_npz(tmp, source, sha, key, on_progress)
            else:
                self._build(tmp, source, sha, key, image_size, channels, workers, on_progress)
            self._publish(tmp, key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        found = self.get(key, device)
        if found is None:  # renamed a moment ago; only an outside hand could have removed it
            raise OSError(f"prepared store {self.path(key)} vanished right after it was written")
        return found

    def _build(self, tmp: Path, source: Path, sha: str, key: str, image_size: tuple[int, int] | None,
               channels: int | None, workers: int | None, on_progress: ProgressFn | None) -> None:
        with _scanned(source) as (layout, _):
            info = layout.info(None, None)
            members = layout.members
        c = channels or info.in_channels
        h, w = image_size or info.image_size
        counts = {s: len(members[s]) for s in SPLITS}
        for s in SPLITS:
            np.lib.format.open_memmap(tmp / f"{s}_x.npy", mode="w+", dtype=np.uint8,
                                      shape=(counts[s], c, h, w)).flush()
            with open(tmp / f"{s}_y.npy", "wb") as f:
                np.save(f, np.array([label for _, label in members[s]], dtype=np.int64))
        total = sum(counts.values())
        job = {"source": str(source.resolve()), "dir": str(tmp), "mode": "L" if c == 1 else "RGB",
               "size": [w, h], "policy": resize_policy(image_size)}
        decode_all(job, total, default_workers(total) if workers is None else workers, on_progress, touch=tmp)
        x_train = np.load(tmp / "train_x.npy", mmap_mode="r")
        row = max(1, int(np.prod(x_train.shape[1:])))
        mean, std = channel_stats(x_train, 255.0, chunk=max(1, STATS_CHUNK_BYTES // (8 * row)))
        del x_train
        info = dataclasses.replace(info, in_channels=c, image_size=(h, w), mean=mean, std=std)
        meta = {"format": FORMAT, "key": key, "dataset": info.describe(), "counts": counts,
                "image_size": [h, w], "channels": c, "resize_policy": resize_policy(image_size),
                "source_sha256": sha, "created": datetime.now(UTC).isoformat(timespec="seconds")}
        _write_meta(tmp, meta)

    def _build_npz(self, tmp: Path, source: Path, sha: str, key: str, on_progress: ProgressFn | None) -> None:
        info = prepare_npz(source, tmp, on_progress)  # streamed: the arrays are never held whole
        counts = {"train": info.train_size or 0, "test": info.test_size or 0}
        _write_meta(tmp, {"format": FORMAT, "key": key, "dataset": info.describe(), "counts": counts,
                          "image_size": list(info.image_size), "channels": info.in_channels, "resize_policy": None,
                          "source_sha256": sha, "created": datetime.now(UTC).isoformat(timespec="seconds")})

    def _publish(self, tmp: Path, key: str) -> None:
        """Renames tmp to <root>/<key>; a complete store already there (another process won) is kept."""
        final = self.path(key)
        if final.exists() and self.get(key) is None:  # unreadable leftovers under the final name
            trash = self.root / f".tmp-{key}-broken-{secrets.token_hex(6)}"
            try:
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, final)
        except OSError:
            if self.get(key) is None:
                raise
            return  # another process finished first: theirs stays, ours is removed by the caller
        _fsync(self.root)
