"""The architecture registry: registration, kwargs validation, construction and the catalog.

Architecture modules import `register_model` from here (not from the package) so that the package's
`__init__` can import them for their side effect without a circular import.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdcore.errors import InvalidModelKwargsError
from kdcore.registry import Entry, Registry, UnknownNameError

# A registered factory: fn(*, num_classes, in_channels, input_size=(H, W), **validated_kwargs) -> nn.Module.
ModelFactory = Callable[..., nn.Module]

DEFAULT_INPUT_SIZE: tuple[int, int] = (32, 32)

# Keys that mean "class count" / "input channels" in the kwargs users write. They are not
# architecture parameters: the dataset fixes them, so they may only repeat the dataset's values.
# `in_chans` is timm's spelling, common in specs written for other tools.
_NUM_CLASSES_KEYS = ("num_classes",)
_IN_CHANNELS_KEYS = ("in_channels", "in_chans")
# Never download anything: the service trains from scratch or from an uploaded teacher checkpoint.
_WEIGHT_KEYS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


class NoParams(BaseModel):
    """This architecture takes no parameters besides the dataset's class count and channels."""

    model_config = ConfigDict(extra="forbid")


class _ModelRegistry(Registry[ModelFactory]):
    """A Registry whose torchvision entries are added on first lookup.

    Listing torchvision's models means importing torchvision.models (about a second, more than torch
    itself takes to import); the API process only needs the names when it validates a spec or serves
    the catalog, so the import waits until then. Builtins register eagerly at import.
    """

    def __init__(self, kind: str, loader: Callable[[_ModelRegistry], None] | None = None):
        super().__init__(kind)
        self._loader = loader
        self._loaded = loader is None
        self._lock = threading.Lock()

    def set_loader(self, loader: Callable[[_ModelRegistry], None]) -> None:
        self._loader, self._loaded = loader, False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:  # two API threads may look a name up at once; load exactly once
            if not self._loaded and self._loader is not None:
                self._loader(self)
            self._loaded = True

    def get(self, name: str) -> Entry[ModelFactory]:
        if name not in self._entries:  # builtins resolve without loading torchvision
            self._ensure_loaded()
        if name not in self._entries:
            # The error lists at most 60 names; put the builtins first so that the small CIFAR/MNIST
            # networks are not hidden behind some 80 torchvision ones.
            entries = sorted(self._entries.values(),
                             key=lambda e: (e.meta.get("family") != "builtin", e.name))
            raise UnknownNameError(self.kind, name, [e.name for e in entries])
        return self._entries[name]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return super().names()

    def __contains__(self, name: object) -> bool:
        if name in self._entries:
            return True
        self._ensure_loaded()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[Entry[ModelFactory]]:
        self._ensure_loaded()
        return super().__iter__()

    def __len__(self) -> int:
        self._ensure_loaded()
        return super().__len__()

    def has_loaded(self, name: str) -> bool:
        """Whether `name` is registered, without triggering the lazy load (used by the loader)."""
        return name in self._entries


MODELS: _ModelRegistry = _ModelRegistry("architecture")


def register_model(
    name: str | None = None,
    *,
    params: type[BaseModel] | None = None,
    family: str = "builtin",
    description: str = "",
) -> Callable[[ModelFactory], ModelFactory]:
    """Register fn(*, num_classes, in_channels, input_size=(H, W), **kwargs) -> nn.Module.

    `params` is a pydantic model (use extra="forbid") describing the accepted kwargs; it validates
    them and gives the catalog its JSON schema. Without one the architecture accepts no kwargs.
    """

    def deco(fn: ModelFactory) -> ModelFactory:
        desc = description or _first_paragraph(fn.__doc__)
        return MODELS.register(name, params=params or NoParams, family=family, description=desc)(fn)

    return deco


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_dataset_key(
    kwargs: dict[str, Any],
    keys: tuple[str, ...],
    dataset_value: int | None,
    what: str,
    errors: list[dict[str, Any]],
    keep: dict[str, Any],
) -> None:
    """Take the class-count / channel keys out of kwargs: they must agree with the dataset."""
    for key in keys:
        if key not in kwargs:
            continue
        v = kwargs.pop(key)
        if not _is_int(v) or v < 1:
            errors.append({"loc": [key], "msg": f"must be a positive integer, got {v!r}"})
        elif dataset_value is not None and v != dataset_value:
            msg = f"kwarg {key}={v} contradicts dataset's {dataset_value} {what}"
            errors.append({"loc": [key], "msg": msg})
        elif dataset_value is None:
            # No dataset to compare with yet (e.g. an uploaded dataset not read at submit time):
            # keep it, so that the check runs again when the model is built.
            keep[key] = v
        # equal to the dataset's value: redundant, dropped (the dataset supplies it anyway)


def _pydantic_errors(exc: pydantic.ValidationError, params: type[BaseModel]) -> list[dict[str, Any]]:
    accepted = ", ".join(params.model_fields) or "none"
    out: list[dict[str, Any]] = []
    for e in exc.errors(include_url=False):
        loc = list(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown kwarg {loc[-1]!r} (accepted: {accepted})"
        out.append({"loc": loc, "msg": msg})
    return out


def validate_model_kwargs(
    name: str,
    kwargs: Mapping[str, Any] | None,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> dict[str, Any]:
    """Check an architecture's kwargs; return them normalized (defaults filled, types coerced).

    Raises UnknownNameError for an unknown architecture, and InvalidModelKwargsError (a ValueError)
    for kwargs the params model rejects, for pretrained-weight requests, and for a class count or
    channel count that contradicts the dataset's. Class and channel counts equal to the dataset's are
    dropped from the result; with no dataset value to compare (None) they are kept.
    """
    entry = MODELS.get(name)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise InvalidModelKwargsError(name, [{"loc": [], "msg": f"kwargs must be an object, got {kwargs!r}"}])
    rest = dict(kwargs)
    errors: list[dict[str, Any]] = []
    keep: dict[str, Any] = {}
    _check_dataset_key(rest, _NUM_CLASSES_KEYS, num_classes, "classes", errors, keep)
    _check_dataset_key(rest, _IN_CHANNELS_KEYS, in_channels, "input channels", errors, keep)
    for key in _WEIGHT_KEYS:
        if key in rest:
            rest.pop(key)
            errors.append({"loc": [key], "msg": "pretrained weights are never downloaded; models start from "
                           "random initialisation (upload a checkpoint to use trained weights)"})
    if "input_size" in rest:
        rest.pop("input_size")
        errors.append({"loc": ["input_size"], "msg": "input_size comes from the dataset; do not set it"})

    params: type[BaseModel] = entry.meta["params"]
    normalized: dict[str, Any] = {}
    try:
        normalized = params.model_validate(rest).model_dump()
    except pydantic.ValidationError as exc:
        errors.extend(_pydantic_errors(exc, params))
    if errors:
        raise InvalidModelKwargsError(name, errors)
    normalized.update(keep)
    return normalized


def _check_positive_int(value: object, what: str) -> int:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value  # type: ignore[return-value]


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | list[int] = DEFAULT_INPUT_SIZE,
    **kwargs: Any,
) -> nn.Module:
    """Validate kwargs, then build `name` with random initial weights.

    Class count, input channels and input size (H, W) come from the dataset; pass the dataset's
    image_size as input_size: the mlp's first layer is sized from it (others adapt to any size).
    """
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (H, W), got {input_size!r}")
    size = (_check_positive_int(input_size[0], "input height"),
            _check_positive_int(input_size[1], "input width"))
    clean = validate_model_kwargs(name, kwargs, num_classes=num_classes, in_channels=in_channels)
    return MODELS.get(name).fn(num_classes=num_classes, in_channels=in_channels, input_size=size, **clean)


_schema_cache: dict[type[BaseModel], dict[str, Any]] = {}


def model_catalog() -> list[dict[str, Any]]:
    """[{name, family, description, params: JSON schema}] for every architecture, sorted by name."""
    out = []
    for entry in MODELS:
        params: type[BaseModel] = entry.meta["params"]
        if params not in _schema_cache:  # the torchvision entries share one schema
            _schema_cache[params] = params.model_json_schema()
        out.append({
            "name": entry.name,
            "family": entry.meta["family"],
            "description": entry.meta["description"],
            "params": copy.deepcopy(_schema_cache[params]),  # callers may edit theirs
        })
    return out


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
