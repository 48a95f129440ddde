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


@dataclass
class SubsetSplit:
    """The rows `rows` of another split, in that order (the validation set held out of a train split, and
    the train split that is left): any Split, in memory or on disk, read through its own methods."""

    parent: Split
    rows: torch.Tensor  # int64, on the parent's labels' device
    _digest: list[str] = field(default_factory=list, repr=False, compare=False)

    @cached_property  # gathered once: the loop reads the labels of every batch from it
    def labels(self) -> torch.Tensor:
        return self.parent.labels.index_select(0, self.rows)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.parent.batch(self.rows.index_select(0, idx.to(self.rows.device)))

    def head(self, n: int) -> torch.Tensor:
        return self.parent.batch(self.rows[:n])

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self), max(1, int(size))):
            yield self.parent.batch(self.rows[i:i + size])

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
        return self.parent.batches(self.rows.index_select(0, order.to(self.rows.device)), batch_size, steps)

    def digest(self) -> str:
        if not self._digest:  # the parent's content and which of its rows, in which order
            self._digest.append(f"{self.parent.digest()}[{tensor_digest(self.rows)[:32]}]")
        return self._digest[0]

@dataclass
class HeldOutData:
    """A dataset whose train split lost its validation rows to `val` (training.validation): the loop trains
    on `train`, chooses on `val` (keep best, rescues) and only reports on `test`."""

    source: Data
    train: SubsetSplit
    val: SubsetSplit

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    @property
    def test(self) -> Split:
        return self.source.test

    def to(self, device: torch.device | str) -> HeldOutData:
        src = self.source.to(device)
        dev = src.train.labels.device
        return HeldOutData(src, SubsetSplit(src.train, self.train.rows.to(dev)),
                           SubsetSplit(src.train, self.val.rows.to(dev)))

    @classmethod
    def hold_out(cls, data: Data, size: int, seed: int) -> HeldOutData:
        """`size` samples of data's train split held out (holdout_rows: stratified, seeded)."""
        train, val = holdout_rows(data.train.labels, size, seed)
        return cls(data, SubsetSplit(data.train, train), SubsetSplit(data.train, val))


def holdout_rows(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, validation rows): `size` rows held out, stratified (each class gives its share of
    `size`, largest remainders first, so the class proportions match the split's) and chosen by `seed`.
    Train rows come back sorted (sequential reads from disk); validation rows shuffled, so any prefix of
    them (the loop's small probe batch) is itself a fair sample."""
    y = labels.detach().to("cpu", torch.int64)
    n = int(y.shape[0])
    if not 0 < size < n:
        raise ValueError(f"cannot hold out {size} of {n} samples")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * size / n
    take = quota.floor().long()
    # the rows still owed go to the classes with the largest remainders (ties: lower class first)
    owed = size - int(take.sum())
    if owed:
        take[torch.argsort(quota - take.double(), descending=True, stable=True)[:owed]] += 1
    held = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(y == c).flatten()
        held.append(members[torch.randperm(len(members), generator=gen)[:k]])
    val = torch.cat(held)
    val = val[torch.randperm(len(val), generator=gen)]
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    device = labels.device
    return torch.nonzero(keep).flatten().to(device), val.to(device)


def validation_size(n: int, validation: float) -> int:
    """How many of a train split's n samples `training.validation` holds out: below 1 a fraction (rounded,
    at least 1), from 1 a count; 0 holds out none."""
    if validation <= 0:
        return 0
    return max(1, round(n * validation)) if validation < 1 else int(validation)
