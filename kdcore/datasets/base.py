"""What every dataset hands to the training loop: tensors plus the facts a model needs about them."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch

from kdcore.digests import tensor_digest


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


class Split(Protocol):
    """One split (train or test) as the training loop reads it: normalized float32 NCHW batches on the
    split's device, whatever holds the data (tensors in memory, or a prepared store on disk read batch by
    batch: kdcore.datasets.store)."""

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N], on the split's device."""
        ...

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The samples idx, in that order."""
        ...

    def head(self, n: int) -> torch.Tensor:
        """The first n samples (dry runs, probes)."""
        ...

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Every sample, in order, `size` at a time (evaluation, the teacher-output cache)."""
        ...

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
        """The samples of `order`, `batch_size` at a time, for `steps` batches (an epoch); a split that reads
        from disk reads the next batch while the caller computes on this one."""
        ...

    def digest(self) -> str:
        """Identity of the split's content, for cache keys."""
        ...


class Data(Protocol):
    """What every dataset hands to the training loop: its facts and its two splits."""

    info: DatasetInfo

    @property
    def train(self) -> Split: ...

    @property
    def test(self) -> Split: ...

    def to(self, device: torch.device | str) -> Data: ...


@dataclass
class TensorSplit:
    """A split held as tensors: x float32 NCHW normalized, y int64."""

    x: torch.Tensor
    y: torch.Tensor
    _digest: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x.index_select(0, idx)

    def head(self, n: int) -> torch.Tensor:
        return self.x[:n]

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self), size):
            yield self.x[i:i + size]

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
        for i in range(steps):
            yield self.x.index_select(0, order[i * batch_size:(i + 1) * batch_size])

    def digest(self) -> str:
        if not self._digest:  # hashed once: a sweep's jobs and every epoch reuse it
            self._digest.append(tensor_digest(self.x))
        return self._digest[0]


@dataclass
class TensorData:
    """A whole dataset held as tensors (float32 NCHW, normalized; int64 labels): the small built-ins."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @cached_property  # one object per split, so its content digest is computed once
    def train(self) -> TensorSplit:
        return TensorSplit(self.x_train, self.y_train)

    @cached_property
    def test(self) -> TensorSplit:
        return TensorSplit(self.x_test, self.y_test)

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.info, self.x_train.to(device), self.y_train.to(device),
                          self.x_test.to(device), self.y_test.to(device))
