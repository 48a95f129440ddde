"""A small name -> factory registry in the style of timm's `register_model` / `create_model`.

One decorator registers, one call creates, and an unknown name raises an error that lists the
known choices, so that the API can hand it to the user as a 422 unchanged.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kdcore.errors import UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])



@dataclass
class Entry(Generic[F]):
    name: str
    fn: F
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """Maps names to factories plus free-form metadata (parameter schema, family, paper…)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = Entry(key, fn, dict(meta))
            return fn

        return deco

    def add(self, name: str, fn: F, **meta: Any) -> None:
        """Register without a decorator (for generated entries such as torchvision's models)."""
        self.register(name, **meta)(fn)

    def get(self, name: str) -> Entry[F]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).fn(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[k] for k in self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_family(package: str, path: Iterable[str]) -> None:
    """Imports every public module of a registry's package (models, datasets, methods), so that each
    file registers itself by its decorator: adding a model, a dataset or a method is adding one file.
    Modules whose names start with `_` hold shared plumbing and are imported by those that need them."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
