"""kdcore.datasets.imagefolder: structural inspection (names and headers, a few sample decodes), the loader
(one member at a time, same arrays as a decode-everything reader), the resize policy and the errors, each
naming the member at fault."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from kdcore.datasets import DatasetError, inspect_imagefolder, load_dataset
from kdcore.datasets import imagefolder as imf
from kdcore.datasets._common import channel_stats


def png(shape: tuple[int, ...], seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def write_zip(path: Path, entries: dict[str, bytes | None]) -> Path:
    """A zip of these members (deflated: read as streams that seek by re-reading); None is a directory entry."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            if data is None:
                zf.mkdir(name.rstrip("/"))
            else:
                zf.writestr(name, data)
    return path


def layout(classes: tuple[str, ...] = ("cat", "dog"), n_train: int = 3, n_test: int = 1,
           shape: tuple[int, ...] = (10, 12, 3), prefix: str = "") -> dict[str, bytes | None]:
    return {f"{prefix}{split}/{cls}/{i}.png": png(shape, seed=hash((split, cls, i)) % 1000)
            for split, n in (("train", n_train), ("test", n_test)) for cls in classes for i in range(n)}


def truncated() -> bytes:
    """A PNG whose header reads but whose pixel data stops short: only a full decode finds out."""
    return png((40, 40, 3))[:-200]


def test_inspect_and_load_agree_and_inspect_has_no_mean(tmp_path: Path) -> None:
    for gray, shape in ((False, (10, 12, 3)), (True, (10, 12))):
        path = write_zip(tmp_path / f"{gray}.zip", layout(("b", "a", "c"), shape=shape, prefix="pets/"))
        info = inspect_imagefolder(path)
        data = load_dataset("imagefolder", tmp_path, artifact=path)
        channels = 1 if gray else 3
        assert (info.num_classes, info.in_channels, info.image_size) == (3, channels, (10, 12))
        assert info.class_names == data.info.class_names == ("a", "b", "c")
        assert (info.train_size, info.test_size) == (9, 3)
        assert info.mean is None and info.std is None
        assert "computed when a job loads" in info.describe()["normalization"]
        assert data.info.input_shape == info.input_shape and data.x_train.shape == (9, channels, 10, 12)
        assert data.info.mean is not None and len(data.info.mean) == channels
        assert data.y_train.tolist() == [0] * 3 + [1] * 3 + [2] * 3


def test_mixed_sizes_are_resized_bilinear_to_the_most_common_train_size(tmp_path: Path) -> None:
    entries = layout(shape=(10, 12, 3))
    odd = png((21, 17, 3), seed=7)
    entries["train/dog/9.png"] = odd
    entries["test/cat/9.png"] = png((5, 30, 3), seed=8)
    path = write_zip(tmp_path / "mixed.zip", entries)
    assert inspect_imagefolder(path).image_size == (10, 12)
    info, (x_train, _, x_test, _) = imf._load(path)
    assert x_train.shape == (7, 3, 10, 12) and x_test.shape == (3, 3, 10, 12)
    want = np.asarray(Image.open(io.BytesIO(odd)).convert("RGB").resize((12, 10), Image.Resampling.BILINEAR))
    assert np.array_equal(x_train[-1], want.transpose(2, 0, 1))  # dog's last member by name: 9.png
    assert info.mean == channel_stats(x_train, 255.0)[0]


def test_gray_and_rgb_mixed_become_rgb(tmp_path: Path) -> None:
    entries = layout(shape=(10, 12))
    entries["train/cat/rgb.png"] = png((10, 12, 3))
    path = write_zip(tmp_path / "m.zip", entries)
    assert inspect_imagefolder(path).in_channels == 3
    assert load_dataset("imagefolder", tmp_path, artifact=path).x_train.shape[1] == 3


def test_every_accepted_format_reads(tmp_path: Path) -> None:
    entries = layout(n_train=1)
    for i, fmt in enumerate(("JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")):
        entries[f"train/cat/f{i}.{fmt.lower()}"] = png((10, 12, 3), seed=i, fmt=fmt)
    path = write_zip(tmp_path / "formats.zip", entries)
    assert inspect_imagefolder(path).train_size == 8
    assert load_dataset("imagefolder", tmp_path, artifact=path).x_train.shape == (8, 3, 10, 12)


def test_os_droppings_and_files_outside_the_splits_are_ignored(tmp_path: Path) -> None:
    entries = layout(prefix="set/")
    entries.update({"__MACOSX/set/train/cat/._0.png": b"junk", "set/train/cat/.DS_Store": b"junk",
                    "set/train/dog/Thumbs.db": b"junk", "set/README.md": b"hello", "set/labels.csv": b"a,b"})
    info = inspect_imagefolder(write_zip(tmp_path / "d.zip", entries))
    assert info.class_names == ("cat", "dog") and info.train_size == 6


def test_a_directory_loads_like_its_zip(tmp_path: Path) -> None:
    entries = layout()
    for name, data in entries.items():
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_bytes(data or b"")
    a = imf._load(tmp_path / "dir")
    b = imf._load(write_zip(tmp_path / "z.zip", entries))
    assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))


BAD_UPLOADS = {
    "corrupt header": ({"train/dog/1.png": b"not an image at all"}, (), "'train/dog/1.png' cannot be read"),
    "corrupt sample": ({"train/dog/0.png": truncated()}, (), "'train/dog/0.png' cannot be decoded"),
    "empty class dir entry": ({"train/bird/": None}, (), "'train/bird/' holds no images"),
    "class of droppings only": ({"train/bird/.DS_Store": b"x"}, (), "'train/bird/' holds no images"),
    "unaccepted type": ({"train/cat/notes.txt": b"x", "train/cat/a.svg": b"<svg/>"}, (),
                        "'train/cat/a.svg', 'train/cat/notes.txt' not an accepted image type"),
    "outside a class folder": ({"train/stray.png": png((10, 12, 3))}, (), "'train/stray.png' not in a class"),
    "test class without train": ({"test/bird/0.png": png((10, 12, 3))}, (), "'test/bird/' has no train folder"),
    "single class": ({}, ("train/dog/0.png", "train/dog/1.png", "train/dog/2.png", "test/dog/0.png"),
                     "one class folder (train/cat/)"),
    "no test images": ({}, ("test/cat/0.png", "test/dog/0.png"), "no images under test/"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_name_the_member(tmp_path: Path, case: str) -> None:
    extra, drop, message = BAD_UPLOADS[case]
    entries = {k: v for k, v in layout().items() if k not in drop}
    entries.update(extra)
    path = write_zip(tmp_path / "bad.zip", entries)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inspect_imagefolder(path)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("imagefolder", tmp_path, artifact=path)


def test_no_images_at_all_and_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"holds no images.*top level holds: docs/"):
        inspect_imagefolder(write_zip(tmp_path / "e.zip", {"docs/readme.txt": b"x", "train/": None}))
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DatasetError, match="not a readable .zip"):
        inspect_imagefolder(tmp_path / "x.zip")


def test_an_image_that_fails_only_when_decoded_fails_the_load_naming_it(tmp_path: Path) -> None:
    entries = layout(n_train=6)
    entries["train/dog/5.png"] = truncated()  # past the samples (the 1st of each folder, then the 2nd ...)
    path = write_zip(tmp_path / "late.zip", entries)
    assert "train/dog/5.png" not in imf._samples(imf._layout("z", list(entries), []), imf.SAMPLE_DECODES)
    assert inspect_imagefolder(path).train_size == 12
    with pytest.raises(DatasetError, match="'train/dog/5.png' cannot be decoded"):
        load_dataset("imagefolder", tmp_path, artifact=path)


def test_image_pixel_bound_is_read_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = layout()
    entries["train/cat/big.png"] = png((40, 50, 3))
    path = write_zip(tmp_path / "big.zip", entries)
    monkeypatch.setattr(imf, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match=r"'train/cat/big.png' is 50x40 pixels; at most 1000"):
        inspect_imagefolder(path)


def test_inspect_decodes_only_the_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts Pillow's own ImageFile.load through a wrapper, when it decodes (tiles left to read): later
    calls (convert, asarray) find the pixels there."""
    path = write_zip(tmp_path / "many.zip", layout(("a", "b", "c", "d"), n_train=10, n_test=2, shape=(16, 16, 3)))
    loads: list[str] = []
    real = ImageFile.ImageFile.load

    def counting(self: ImageFile.ImageFile) -> object:
        if self.tile:
            loads.append(self.format or "")
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    info = inspect_imagefolder(path)
    assert info.train_size == 40 and len(loads) == imf.SAMPLE_DECODES
    loads.clear()
    load_dataset("imagefolder", tmp_path, artifact=path)
    assert len(loads) == 48  # the loader decodes every image, once
    assert imf._samples(imf._layout("z", sorted(layout(("a", "b", "c", "d"), n_train=10, n_test=2)), []), 8) == [
        "train/a/0.png", "train/b/0.png", "train/c/0.png", "train/d/0.png",
        "test/a/0.png", "test/b/0.png", "test/c/0.png", "test/d/0.png"]
