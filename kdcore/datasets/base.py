"""What every dataset hands to the training loop: tensors plus the facts a model needs about them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """The tensor format of a dataset, as stated in the catalog.

    Models receive float32 NCHW tensors already normalized: x = (pixel / max_value - mean) / std,
    with one mean/std per channel. Teachers exported elsewhere must take exactly this input.

    ``mean`` and ``std`` are None only in the description of an upload inspected without decoding its
    pixels (an image-folder zip: `kdcore.datasets.imagefolder.inspect_imagefolder`); the loader computes
    them from the train split, so the DatasetInfo of loaded TensorData always carries them.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...] | None  # None: not known until the data is loaded (see above)
    std: tuple[float, ...] | None
    class_names: tuple[str, ...]
    train_size: int | None = None
    test_size: int | None = None
    # how raw pixels map to [0, 1] before normalization, e.g. "uint8 / 255" or "0..16 / 16"
    raw_range: str = "uint8 / 255"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.image_size)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the catalog and for student metadata."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["dtype"] = "float32"
        d["layout"] = "NCHW"
        d["normalization"] = f"x = (raw {self.raw_range} - mean) / std, per channel"
        if self.mean is None or self.std is None:
            d["normalization"] += " (mean/std of the train split, computed when a job loads the data)"
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> DatasetInfo:
        """The inverse of `describe()`: an upload's facts as recorded at inspection, read back without
        opening the file again."""
        def tup(v: Any) -> tuple[float, ...] | None:
            return None if v is None else tuple(v)

        return cls(name=d["name"], num_classes=int(d["num_classes"]), in_channels=int(d["in_channels"]),
                   image_size=(int(d["image_size"][0]), int(d["image_size"][1])), mean=tup(d.get("mean")),
                   std=tup(d.get("std")), class_names=tuple(d.get("class_names") or ()),
                   train_size=d.get("train_size"), test_size=d.get("test_size"),
                   raw_range=d.get("raw_range", "uint8 / 255"), extra=dict(d.get("extra") or {}))


@dataclass
class TensorData:
    """A whole dataset held as tensors (float32 NCHW, normalized; int64 labels)."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.info, self.x_train.to(device), self.y_train.to(device),
                          self.x_test.to(device), self.y_test.to(device))
