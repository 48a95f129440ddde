"""Image files in class folders, uploaded as one .zip (or given as a directory).

Layout (inside the zip, optionally under one top-level folder)::

    train/<class name>/<image>      e.g. train/cat/001.png
    test/<class name>/<image>       ("val/" is accepted in place of "test/")

Classes are the train folder names, sorted; test may use a subset of them. Files outside train/, test/
and val/ (a README, a labels.csv) are ignored, and so are OS droppings (``__MACOSX/``, dot files,
Thumbs.db, desktop.ini). Anything else under a split folder that is not ``<split>/<class>/<image>`` with an
accepted extension (IMAGE_SUFFIXES) is refused, naming the files: a skipped file would silently change
the dataset.

Two passes, never more than one image in memory:

* `inspect_imagefolder` (the API, at upload and submit time) reads the directory and each image's
  header only (``PIL.Image.open``: mode and size, no pixels), and fully decodes at most SAMPLE_DECODES
  images spread over the classes to catch corrupt files early. It cannot know mean/std, which need every
  pixel: its DatasetInfo carries ``mean=None, std=None``.
* `load_imagefolder` (the worker) runs the same header pass, then decodes the members one at a time into
  one preallocated uint8 array per split and computes mean/std from the train split.

Channels: 1 if every image is grayscale (GRAY_MODES), otherwise images are converted to RGB (alpha
dropped). Size: the most common train (W, H); an image of another size is resized to it (bilinear).
Each image's pixel count, read from its header before any decode, must be at most MAX_IMAGE_PIXELS
(below Pillow's own decompression-bomb threshold, which also stays in force).
"""
from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from ._common import channel_stats, make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset
from .errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
TEST_DIRS = ("test", "val")
SPLIT_DIRS = ("train", *TEST_DIRS)
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
# Per image, from its header, before any pixel is decoded: 8192 x 8192. Pillow's own guard
# (Image.MAX_IMAGE_PIXELS, 89.5 M pixels: a warning, an error past twice that) is left as it is,
# process-wide; this bound is lower, so an image we accept never trips Pillow's warning.
MAX_IMAGE_PIXELS = 8192 * 8192
# Images fully decoded at inspection (the rest only have their header read), spread over the classes.
SAMPLE_DECODES = 8
STATS_CHUNK_BYTES = 64 * 2**20  # float64 working set of the train split's mean/std at load
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
# resize policies (see decode_member): the loader's, and a prepared store's at a chosen image size
RESIZE_STRETCH = "stretch-to-most-common"
RESIZE_COVER_CROP = "cover-center-crop"
_LISTED = 5  # members named in one message

IMAGEFOLDER_FORMAT = (
    "a .zip of train/<class>/<image> and test/<class>/<image> (or val/) image files (png, jpg, ...); "
    "classes are the sorted train folder names"
)

Opener = Callable[[str], IO[bytes]]


@dataclass
class _Layout:
    """The upload's members by split and class (names only), and what their headers said."""

    what: str  # "the zip" or "the folder <path>", for messages
    prefix: str  # the stripped top-level folder with its "/", or ""
    classes: list[str]
    # split -> [(member path as stored, label)], by class then by name: the order of the arrays
    members: dict[str, list[tuple[str, int]]]
    sizes: Counter = field(default_factory=Counter)  # (W, H) of train images
    gray: bool = True

    @property
    def size(self) -> tuple[int, int]:
        return self.sizes.most_common(1)[0][0]

    def info(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> DatasetInfo:
        w, h = self.size
        return DatasetInfo(name="imagefolder", num_classes=len(self.classes), in_channels=1 if self.gray else 3,
                           image_size=(int(h), int(w)), mean=mean, std=std, class_names=tuple(self.classes),
                           train_size=len(self.members["train"]), test_size=len(self.members["test"]))


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(repr(n) for n in names[:_LISTED]) + more


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return not parts or "__MACOSX" in parts or parts[-1].startswith(".") or parts[-1].lower() in IGNORED_NAMES


@contextmanager
def _entries(path: Path) -> Iterator[tuple[str, list[str], list[str], Opener]]:
    """(what, file names, directory names, open one member) for a zip or a directory; names are POSIX
    paths relative to the upload, read from the zip's central directory only."""
    if path.is_dir():
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        dirs = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir())
        yield f"the folder {path}", files, dirs, lambda name: open(path / name, "rb")  # noqa: SIM115
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{path.name} is not a readable .zip of image folders: {e}") from e
    with zf:
        # members are opened one at a time as streams, never extracted: "../" names cannot escape
        # (kdcore.checkpoints.inspection refuses them at upload anyway)
        infos = zf.infolist()
        files = [i.filename for i in infos if not i.is_dir()]
        dirs = [i.filename.rstrip("/") for i in infos if i.is_dir()]
        yield "the zip", files, dirs, zf.open


def _layout(what: str, files: list[str], dirs: list[str]) -> _Layout:
    """Classes and members per split from the names alone; every layout error names its members."""
    # a folder holding only droppings (train/bird/.DS_Store) is still a folder: an empty class
    dirs = dirs + [str(PurePosixPath(f).parent) for f in files if _ignored(f) and "/" in f]
    files = [f for f in files if not _ignored(f)]
    dirs = [d for d in dirs if not _ignored(d)]
    tops = {PurePosixPath(n).parts[0] for n in files + dirs if PurePosixPath(n).parts}
    strip = 1 if len(tops) == 1 and next(iter(tops)) not in SPLIT_DIRS else 0
    prefix = f"{next(iter(tops))}/" if strip else ""
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for d in dirs:
        p = PurePosixPath(d).parts[strip:]
        if len(p) == 2 and p[0] == "train":
            by_split["train"].setdefault(p[1], [])  # a class folder, perhaps empty
    misplaced, wrong_type = [], []
    for name in sorted(files):
        p = PurePosixPath(name).parts[strip:]
        if not p or p[0] not in SPLIT_DIRS:
            continue  # outside the layout: a README, a labels file
        if len(p) != 3:
            misplaced.append(name)
        elif PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            wrong_type.append(name)
        else:
            by_split["train" if p[0] == "train" else "test"].setdefault(p[1], []).append(name)
    if misplaced:
        raise DatasetError(f"{what}: {_listed(misplaced)} not in a class folder; expected {IMAGEFOLDER_FORMAT}")
    if wrong_type:
        raise DatasetError(f"{what}: {_listed(wrong_type)} not an accepted image type "
                           f"({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))}); remove them from the class folders")
    if not any(by_split["train"].values()) and not any(by_split["test"].values()):
        top = ", ".join(sorted(t + "/" for t in tops)) or "nothing"
        raise DatasetError(f"{what} holds no images; expected {IMAGEFOLDER_FORMAT} (its top level holds: {top})")
    empty = sorted(f"{prefix}train/{c}/" for c, names in by_split["train"].items() if not names)
    if empty:
        raise DatasetError(f"{what}: class folder {_listed(empty)} holds no images")
    for split in ("train", "test"):
        if not by_split[split]:
            raise DatasetError(f"{what}: found no images under {prefix}{split}/; expected {IMAGEFOLDER_FORMAT}")
    classes = sorted(by_split["train"])
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        folders = [n.rsplit("/", 2)[0] + "/" + c + "/" for c in unknown for n in by_split["test"][c][:1]]
        raise DatasetError(f"{what}: test class folder {_listed(folders)} has no train folder of that name")
    if len(classes) < 2:
        raise DatasetError(f"{what}: found one class folder ({prefix}train/{classes[0]}/); classification "
                           "needs at least two")
    members = {s: [(n, label) for label, c in enumerate(classes) for n in by_split[s].get(c, [])]
               for s in ("train", "test")}
    return _Layout(what, prefix, classes, members)


def _pil() -> Any:
    from PIL import Image

    return Image


def _failure(member: str, doing: str, e: Exception) -> DatasetError:
    return DatasetError(f"image {member!r} {doing}: {type(e).__name__}: {e}")


@contextmanager
def _opened(opener: Opener, member: str) -> Iterator[Any]:
    """The member as a PIL image with its header read (no pixels yet), its size checked."""
    image = _pil()
    with opener(member) as f:
        try:
            img = image.open(f)
        except Exception as e:  # a plugin fed hostile bytes may raise anything: it is the file's fault
            raise _failure(member, "cannot be read as an image", e) from e
        with img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DatasetError(f"image {member!r} is {w}x{h} pixels; at most {MAX_IMAGE_PIXELS} pixels "
                                   "per image are accepted")
            yield img


def _decoded(img: Any, member: str) -> None:
    try:
        img.load()
    except Exception as e:  # truncated data, bad checksums, a broken zip member
        raise _failure(member, "cannot be decoded", e) from e


def _read_headers(layout: _Layout, opener: Opener) -> None:
    """Mode and size of every image from its header, one member at a time; fills sizes and gray."""
    for split, items in layout.members.items():
        for member, _ in items:
            with _opened(opener, member) as img:
                if split == "train":
                    layout.sizes[img.size] += 1
                layout.gray = layout.gray and img.mode in GRAY_MODES


def _samples(layout: _Layout, k: int) -> list[str]:
    """Up to k members spread over the (split, class) folders: the first of each, then the second ..."""
    groups: dict[tuple[str, int], list[str]] = {}
    for split, items in layout.members.items():
        for member, label in items:
            groups.setdefault((split, label), []).append(member)
    picked: list[str] = []
    depth = 0
    while len(picked) < k and any(len(g) > depth for g in groups.values()):
        picked += [g[depth] for g in groups.values() if len(g) > depth][: k - len(picked)]
        depth += 1
    return picked


@contextmanager
def _scanned(path: Path) -> Iterator[tuple[_Layout, Opener]]:
    """The layout with every header read, and the opener, while the zip is open."""
    with _entries(Path(path)) as (what, files, dirs, opener):
        layout = _layout(what, files, dirs)
        _read_headers(layout, opener)
        yield layout, opener


def decode_member(opener: Opener, member: str, mode: str, size: tuple[int, int], policy: str = RESIZE_STRETCH
                  ) -> np.ndarray:
    """One member decoded to uint8 CHW in ``mode`` ("L" or "RGB") at ``size`` (W, H), by the resize policy:
    RESIZE_STRETCH resizes an image of another size to exactly ``size`` (bilinear, aspect not kept: the
    loader's policy); RESIZE_COVER_CROP scales it, aspect kept, to the smallest size that covers ``size``
    (for a square target: its shorter side to the target's side), bilinear, then crops the center."""
    image = _pil()
    with _opened(opener, member) as img:
        _decoded(img, member)
        try:
            out = img.convert(mode)
            if out.size != size and policy == RESIZE_COVER_CROP:
                (w, h), (tw, th) = out.size, size
                scale = max(tw / w, th / h)
                nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
                if (nw, nh) != (w, h):
                    out = out.resize((nw, nh), image.Resampling.BILINEAR)
                left, top = (nw - tw) // 2, (nh - th) // 2
                out = out.crop((left, top, left + tw, top + th))
            elif out.size != size:
                out = out.resize(size, image.Resampling.BILINEAR)
        except Exception as e:
            raise _failure(member, "cannot be converted", e) from e
        a = np.asarray(out, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@contextmanager
def members_in_order(path: Path) -> Iterator[tuple[dict[str, list[tuple[str, int]]], Opener]]:
    """{split: [(member, label)] in array order} from the names alone (no header read), and the opener,
    while the zip is open: what a decoding process needs to fill its range of a prepared store."""
    with _entries(Path(path)) as (what, files, dirs, opener):
        yield _layout(what, files, dirs).members, opener


def _array(layout: _Layout, opener: Opener, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as uint8 NCHW, decoded one member at a time into a preallocated array."""
    size = layout.size
    items = layout.members[split]
    x = np.empty((len(items), 1 if layout.gray else 3, size[1], size[0]), dtype=np.uint8)
    for i, (member, _) in enumerate(items):
        x[i] = decode_member(opener, member, "L" if layout.gray else "RGB", size)
    return x, np.array([label for _, label in items], dtype=np.int64)


def _load(path: Path) -> tuple[DatasetInfo, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    with _scanned(path) as (layout, opener):
        x_train, y_train = _array(layout, opener, "train")
        x_test, y_test = _array(layout, opener, "test")
    # in chunks of ~64 MiB as float64: the default 4096 images of 224x224x3 would be 4.6 GiB, twice
    mean, std = channel_stats(x_train, 255.0, chunk=max(1, STATS_CHUNK_BYTES // (8 * x_train[0].size)))
    return layout.info(mean, std), (x_train, y_train, x_test, y_test)


def inspect_imagefolder(path: Path) -> DatasetInfo:
    """Check an image-folder zip structurally and describe it, in memory that does not grow with the data.

    Reads the names, every image's header (mode, size) and decodes at most SAMPLE_DECODES images; mean and
    std are None (computed by the loader, from every train pixel). Raises DatasetError naming the member.
    """
    with _scanned(path) as (layout, opener):
        for member in _samples(layout, SAMPLE_DECODES):
            with _opened(opener, member) as img:
                _decoded(img, member)
    return layout.info(None, None)


@register_dataset(
    "imagefolder",
    description="Your own images: an uploaded .zip with train/<class>/ and test/<class>/ folders of image "
    "files. Normalized with the train split's per-channel mean/std.",
    needs_artifact=True,
    inspect=inspect_imagefolder,
    artifact_format=IMAGEFOLDER_FORMAT,
    preparable=True,
    resizable=True,
)
def load_imagefolder(root: Path, artifact: Path | None, download: bool) -> TensorData:
    if artifact is None:
        raise DatasetError("dataset 'imagefolder' needs an uploaded .zip artifact")
    info, (x_train, y_train, x_test, y_test) = _load(Path(artifact))
    return make_data(info, x_train, y_train, x_test, y_test, max_value=255.0)
